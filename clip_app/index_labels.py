"""`python -m clip_app.index labels <command> ...`: label sets on the command line.

Each labels command is one entry of LABEL_COMMANDS (name -> (add its parser, run it)), so more (add, list, remove,
rename) slot in beside `example` and `examples` without touching the others.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable

from .config import Settings
from .label_sets import LabelSetError, LabelSetStore, default_label_sets_file

Runner = Callable[[argparse.Namespace, Settings, Any, Callable[..., Any]], int]


def store_of(settings: Settings) -> LabelSetStore:
    """The label sets file beside the library of these settings."""
    return LabelSetStore(default_label_sets_file(settings.library_file))


def _example_parser(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("name", metavar="NAME", help="a saved label set")
    sub.add_argument("label", metavar="LABEL", help="one of its labels (any case)")
    sub.add_argument("ids", nargs="+", type=int, metavar="ID", help="library image IDs")
    sub.add_argument("--remove", action="store_true", help="remove these IDs from the label's examples instead")
    sub.add_argument("--json", action="store_true", help="print the set's examples as JSON")


def cmd_example(args: argparse.Namespace, settings: Settings, encoder: Any, open_library: Callable[..., Any]) -> int:
    """Add (or --remove) library images as examples of one label; every ID must be in the library to be added."""
    store = store_of(settings)
    if args.remove:
        examples = store.remove_examples(args.name, args.label, args.ids)
    else:
        library = open_library(args, settings, encoder, strict=False)
        for image_id in args.ids:
            library.get(image_id)  # UnknownImageError (exit 1) names the ID; nothing is stored
        examples = store.add_examples(args.name, args.label, args.ids)
    _print_examples(args, examples)
    return 0


def _examples_parser(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("name", metavar="NAME", help="a saved label set")
    sub.add_argument("--json", action="store_true", help="print JSON: {label: [image IDs]}")


def cmd_examples(args: argparse.Namespace, settings: Settings, encoder: Any, open_library: Callable[..., Any]) -> int:
    """List a set's examples: one line per label with its image IDs."""
    _print_examples(args, store_of(settings).examples(args.name))
    return 0


def _print_examples(args: argparse.Namespace, examples: dict[str, list[int]]) -> None:
    if args.json:
        print(json.dumps(examples, ensure_ascii=False, indent=1))
        return
    if not examples:
        print(f"{args.name}: no examples")
    for label, ids in examples.items():
        print(f"{label}\t{' '.join(map(str, ids))}")


#: labels sub-command -> (help, add its arguments, run it)
LABEL_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Runner]] = {
    "example": ("add library images (by ID) as examples of a label of a saved set (few-shot); --remove to take "
                "them out", _example_parser, cmd_example),
    "examples": ("list the examples of a saved set, per label", _examples_parser, cmd_examples),
}


def add_labels_parser(commands: Any) -> None:
    """The `labels` sub-command and its own sub-commands (LABEL_COMMANDS)."""
    labels = commands.add_parser("labels", help="label sets: few-shot examples per label")
    sub = labels.add_subparsers(dest="labels_command", required=True, metavar="LABELS_COMMAND")
    for name, (text, add_arguments, _) in LABEL_COMMANDS.items():
        add_arguments(sub.add_parser(name, help=text))


def cmd_labels(args: argparse.Namespace, settings: Settings, encoder: Any, open_library: Callable[..., Any]) -> int:
    """Run one labels sub-command; a label set problem is exit status 1 with its message."""
    try:
        return LABEL_COMMANDS[args.labels_command][2](args, settings, encoder, open_library)
    except LabelSetError as exc:
        raise LabelsCommandError(str(exc)) from None


class LabelsCommandError(ValueError):
    """A labels command that cannot be done (unknown set or label, an ID that is not an example)."""
