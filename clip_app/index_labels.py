"""`python -m clip_app.index labels <command> ...`: label sets on the command line.

Each labels command is one entry of LABEL_COMMANDS (name -> (help, add its arguments, run it)): add, list, remove
and rename (sets, their template and tags) and example / examples (few-shot examples per label).
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable

from .config import Settings
from .label_sets import LabelSet, LabelSetError, LabelSetStore

Runner = Callable[[argparse.Namespace, Settings, Any, Callable[..., Any]], int]


def store_of(settings: Settings) -> LabelSetStore:
    """The label sets of the library of these settings: label_sets.json beside its file, or a document in its
    PostgreSQL tables."""
    from .library.pg_store import label_set_store

    return label_set_store(None, settings.library_file)


def _untag(settings: Settings, store: LabelSetStore, name: str) -> None:
    from .classify import ClassifierCache
    from .library.pg_store import tag_file
    from .library.tags import LibraryTags

    LibraryTags(tag_file(None, settings.library_file), store, ClassifierCache()).untag(name)


def set_json(label_set: LabelSet, builtin: bool) -> dict:
    """One set in `labels list --json`."""
    return {"name": label_set.name, "labels": list(label_set.labels), "template": label_set.template,
            "threshold": label_set.threshold, "thresholds": dict(label_set.thresholds), "tagged": label_set.tagged,
            "builtin": builtin}


def _labels_add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("labels", metavar="LABELS", help='labels separated by commas, e.g. "cat, dog, receipt"')
    parser.add_argument("--template", help="'single' (a photo of a {}.), 'ensemble' (CLIP's 80 templates) or a "
                        "template with one {} (default: the set's own, else single)")


def _labels_add(args: argparse.Namespace, settings: Settings, encoder: Any,
                open_library: Callable[..., Any]) -> int:
    store = store_of(settings)
    existed = args.name in store.names()
    labels = store.save(args.name, args.labels, args.template)
    name = " ".join(args.name.split())
    print(f"{'replaced' if existed else 'saved'} label set {name!r}: {len(labels)} label"
          f"{'' if len(labels) == 1 else 's'} ({', '.join(labels)}), template {store.get_set(name).template}")
    return 0


def _labels_list_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def _labels_list(args: argparse.Namespace, settings: Settings, encoder: Any,
                 open_library: Callable[..., Any]) -> int:
    store = store_of(settings)
    sets = [(store.get_set(name), True) for name in store.builtin_names()]
    sets += [(s, False) for s in store.saved_sets()]
    if args.json:
        print(json.dumps([set_json(s, builtin) for s, builtin in sets], indent=1, ensure_ascii=False))
        return 0
    for label_set, builtin in sets:
        shown = ", ".join(label_set.labels[:8]) + (", ..." if len(label_set.labels) > 8 else "")
        flags = " [built in]" if builtin else (" [tagged]" if label_set.tagged else "")
        print(f"{label_set.name}{flags}: {len(label_set.labels)} labels, template {label_set.template}: {shown}")
    return 0


def _labels_remove_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME")


def _labels_remove(args: argparse.Namespace, settings: Settings, encoder: Any,
                   open_library: Callable[..., Any]) -> int:
    store = store_of(settings)
    store.delete(args.name)
    _untag(settings, store, args.name)
    print(f"removed label set {args.name!r}")
    return 0


def _labels_rename_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", metavar="OLD")
    parser.add_argument("new", metavar="NEW")


def _labels_rename(args: argparse.Namespace, settings: Settings, encoder: Any,
                   open_library: Callable[..., Any]) -> int:
    store = store_of(settings)
    store.rename(args.old, args.new)
    _untag(settings, store, args.old)  # a tagged set is tagged again under its new name on its next use
    print(f"renamed label set {args.old!r} to {' '.join(args.new.split())!r}")
    return 0


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
    "add": ("save a label set (replacing one of that name)", _labels_add_args, _labels_add),
    "list": ("list the label sets", _labels_list_args, _labels_list),
    "remove": ("delete a saved label set (and its tags and examples)", _labels_remove_args, _labels_remove),
    "rename": ("rename a saved label set", _labels_rename_args, _labels_rename),
    "example": ("add library images (by ID) as examples of a label of a saved set (few-shot); --remove to take "
                "them out", _example_parser, cmd_example),
    "examples": ("list the examples of a saved set, per label", _examples_parser, cmd_examples),
}


def add_labels_parser(commands: Any) -> None:
    """The `labels` sub-command and its own sub-commands (LABEL_COMMANDS)."""
    labels = commands.add_parser("labels", help="manage label sets (the app's label_sets.json): add, list, remove, "
                                 "rename; few-shot examples per label")
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
