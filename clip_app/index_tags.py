"""The index manager's label set, classify, search and tag commands (`python -m clip_app.index labels|classify|
search|tag ...`, and `list --tag`); registered by index.build_parser. JSON shapes are documented in docs/cli.md.

`labels` has sub-commands registered in LABEL_COMMANDS: another sub-command is one more entry
(name -> (help, add_arguments(parser), run(args, settings) -> exit status)).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

from .classify import ClassifierCache, parse_labels, rank
from .config import Settings
from .images import decode_image, read_bytes
from .label_sets import LabelSet, LabelSetStore, default_label_sets_file
from .library.tags import LibraryTags, as_json, parse_threshold_for, tags_path
from .prompts import family_templates

# ---- labels -----------------------------------------------------------------------------------------------------


def label_store(settings: Settings) -> LabelSetStore:
    """The label sets file the app uses: label_sets.json beside the library file."""
    return LabelSetStore(default_label_sets_file(settings.library_file))


def _untag(settings: Settings, store: LabelSetStore, name: str) -> None:
    LibraryTags(tags_path(settings.library_file), store, ClassifierCache()).untag(name)


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


def _labels_add(args: argparse.Namespace, settings: Settings) -> int:
    store = label_store(settings)
    existed = args.name in store.names()
    labels = store.save(args.name, args.labels, args.template)
    name = " ".join(args.name.split())
    print(f"{'replaced' if existed else 'saved'} label set {name!r}: {len(labels)} label"
          f"{'' if len(labels) == 1 else 's'} ({', '.join(labels)}), template {store.get_set(name).template}")
    return 0


def _labels_list_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def _labels_list(args: argparse.Namespace, settings: Settings) -> int:
    store = label_store(settings)
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


def _labels_remove(args: argparse.Namespace, settings: Settings) -> int:
    store = label_store(settings)
    store.delete(args.name)
    _untag(settings, store, args.name)
    print(f"removed label set {args.name!r}")
    return 0


def _labels_rename_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", metavar="OLD")
    parser.add_argument("new", metavar="NEW")


def _labels_rename(args: argparse.Namespace, settings: Settings) -> int:
    store = label_store(settings)
    store.rename(args.old, args.new)
    _untag(settings, store, args.old)  # a tagged set is tagged again under its new name on its next use
    print(f"renamed label set {args.old!r} to {' '.join(args.new.split())!r}")
    return 0


LabelCommand = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace, Settings], int]]
#: `labels` sub-commands: name -> (help, add its arguments, run it)
LABEL_COMMANDS: dict[str, LabelCommand] = {
    "add": ("save a label set (replacing one of that name)", _labels_add_args, _labels_add),
    "list": ("list the label sets", _labels_list_args, _labels_list),
    "remove": ("delete a saved label set (and its tags)", _labels_remove_args, _labels_remove),
    "rename": ("rename a saved label set", _labels_rename_args, _labels_rename),
}


def cmd_labels(args: argparse.Namespace, settings: Settings, encoder: Any) -> int:
    """`labels ...`: label sets need neither the model nor the library."""
    return LABEL_COMMANDS[args.labels_command][2](args, settings)


# ---- classify, search, tag, list --tag ------------------------------------------------------------------------
def cmd_classify(args: argparse.Namespace, settings: Settings, encoder: Any) -> int:
    """Classify image files against labels or a saved set (nothing is stored); 1 when an image failed."""
    if args.set:
        label_set = label_store(settings).get_set(args.set)
        labels, template = list(label_set.labels), args.template or label_set.template
    else:
        labels, template = parse_labels(args.labels), args.template or "single"
    try:
        templates = family_templates(template, getattr(encoder, "family", "clip"))
    except ValueError as exc:
        raise ValueError(f"--template: {exc}") from None
    weights = None
    out: list[dict] = []
    failed = 0
    for path in args.images:
        try:
            data, name = read_bytes(Path(path), path)
            picture = decode_image(data, name, min_side=encoder.decode_min_side)
        except ValueError as exc:  # ImageError: unreadable, not an image, too big
            failed += 1
            out.append({"image": path, "error": str(exc)})
            continue
        if weights is None:
            weights = ClassifierCache().get(encoder, labels, templates)
        feature = encoder.encode_images([picture])[0]
        scores = rank(labels, feature, weights)
        item = {"image": path, "labels": [{"label": s.label, "probability": s.probability, "cosine": s.cosine}
                                          for s in scores]}
        if args.allow_none:
            from .prompts import NEUTRAL_LABEL, NEUTRAL_PROMPTS

            neutral = ClassifierCache().get(encoder, [NEUTRAL_LABEL], NEUTRAL_PROMPTS)[:, 0]
            item["none_of_these"] = bool(float(feature.float() @ neutral) > max(s.cosine for s in scores))
        out.append(item)
    if args.json:
        print(json.dumps(out, indent=1, ensure_ascii=False))
    else:
        for item in out:
            if "error" in item:
                print(f"{item['image']}: error: {item['error']}")
                continue
            best = ", ".join(f"{s['label']} {s['probability']:.1%} (cos {s['cosine']:.3f})" for s in item["labels"][:5])
            none = " -> none of these" if item.get("none_of_these") else ""
            print(f"{item['image']}: {best}{none}")
    return 1 if failed else 0


def open_app(args: argparse.Namespace, settings: Settings, encoder: Any) -> Any:
    """An App over the library of these settings (for search, tag and list --tag)."""
    from .index import open_library
    from .service import App

    return App(encoder, open_library(args, settings, encoder), label_store(settings),
               tag_threshold=settings.tag_threshold, confidence_rule=settings.confidence_rule())


def search_json(query: str, result: Any) -> dict:
    """`{"query", "confident", "reason", "results": [{"id", "file", "score", "percentile"}, ...]}`."""
    return {"query": query, "confident": result.confident, "reason": result.reason,
            "results": [{"id": h.entry.id, "file": h.entry.file, "score": h.score, "percentile": h.percentile}
                        for h in result.hits]}


def cmd_search(args: argparse.Namespace, settings: Settings, encoder: Any) -> int:
    """Search the library by text or by an example image."""
    if bool(args.query) == bool(args.image):
        raise ValueError('give a text query ("QUERY") or --image PATH, not both')
    app = open_app(args, settings, encoder)
    if args.image:
        result, query = app.search_image(args.image, args.k, tag=args.tag, set_name=args.set), args.image
    else:
        result, query = app.search_text(args.query, args.k, tag=args.tag, set_name=args.set), args.query
    if args.json:
        print(json.dumps(search_json(query, result), indent=1, ensure_ascii=False))
        return 0
    if not result.confident:
        print(f"No confident match ({result.reason}); best guesses:")
    for rank_, hit in enumerate(result.hits, 1):
        print(f"{rank_}\t{hit.entry.id}\t{hit.entry.file}\tscore {hit.score:.4f}\tpercentile {hit.percentile:.1f}")
    return 0


def cmd_tag(args: argparse.Namespace, settings: Settings, encoder: Any) -> int:
    """Tag the library with a saved set (storing --threshold / --threshold-for in the set first)."""
    from .index import progress_bar

    app = open_app(args, settings, encoder)
    per_label = parse_threshold_for(args.threshold_for or [])
    if args.threshold is not None or per_label:
        tags = app.set_tag_thresholds(args.set_name, args.threshold, per_label)
    else:
        with progress_bar("tagging", unit="row") as update:
            tags = app.tag_library(args.set_name, progress=update)
    shown = as_json(tags)
    if args.json:
        print(json.dumps(shown, indent=1, ensure_ascii=False))
        return 0
    print(f"tagged {len(tags.ids)} images with label set {tags.name!r}:")
    for label, info in shown["labels"].items():
        print(f"  {label}: {info['count']} image{'' if info['count'] == 1 else 's'} (threshold {info['threshold']:g})")
    return 0


def list_tagged(args: argparse.Namespace, settings: Settings, encoder: Any) -> list:
    """The entries carrying --tag (of --set, else of any tagged set)."""
    return open_app(args, settings, encoder).images_with_tag(args.tag, args.set)


def add_parsers(commands: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace, Settings, Any], int]]:
    """Add labels, classify, search and tag to the index manager's sub-commands; their handlers by name."""
    labels = commands.add_parser("labels", help="manage label sets (the app's label_sets.json)")
    sub = labels.add_subparsers(dest="labels_command", required=True, metavar="ACTION")
    for name, (text, configure, _run) in LABEL_COMMANDS.items():
        configure(sub.add_parser(name, help=text))
    classify = commands.add_parser("classify", help="classify image files against labels (nothing is stored)")
    classify.add_argument("images", nargs="+", metavar="IMAGE")
    which = classify.add_mutually_exclusive_group(required=True)
    which.add_argument("--labels", help='labels separated by commas, e.g. "cat, dog, receipt"')
    which.add_argument("--set", help="a saved label set")
    classify.add_argument("--template", help="single, ensemble or a template with one {} (default: the set's, "
                          "else single)")
    classify.add_argument("--none-of-these", dest="allow_none", action="store_true",
                          help='answer "none of these" when the neutral prompts beat every label (adds '
                          '"none_of_these" to the JSON)')
    classify.add_argument("--json", action="store_true", help="print JSON")
    search = commands.add_parser("search", help="search the library by text or by an example image")
    search.add_argument("query", nargs="?", metavar="QUERY")
    search.add_argument("--image", metavar="PATH", help="search by an example image instead")
    search.add_argument("-k", type=int, default=12, help="number of results (1-50, default 12)")
    search.add_argument("--tag", help="only images carrying this tag")
    search.add_argument("--set", help="the label set of --tag (default: any tagged set)")
    search.add_argument("--json", action="store_true", help="print JSON")
    tag = commands.add_parser("tag", help="tag every image with the labels of a saved set")
    tag.add_argument("set_name", metavar="NAME")
    tag.add_argument("--threshold", metavar="T", help="the set's threshold (cosine in [-1, 1]; stored in the set)")
    tag.add_argument("--threshold-for", dest="threshold_for", action="append", metavar="LABEL=T",
                     help="one label's threshold (stored in the set); repeat for more labels")
    tag.add_argument("--json", action="store_true", help="print JSON")
    return {"labels": cmd_labels, "classify": cmd_classify, "search": cmd_search, "tag": cmd_tag}


# ---- keeping tags in step with the library commands -------------------------------------------------------------
def library_tags(settings: Settings) -> LibraryTags:
    """The tags of the library of these settings."""
    return LibraryTags(tags_path(settings.library_file), label_store(settings), ClassifierCache(),
                       settings.tag_threshold)


def sync_tags(settings: Settings, library: Any, encoder: Any) -> None:
    """After add, remove or rebuild: tag new images (and forget removed ones) for every tagged set. A failure is a
    warning on stderr (check reports it, repair fixes it), never the command's failure."""
    import sys

    from .classify import LabelError
    from .label_sets import LabelSetError
    from .library import LibraryError

    try:
        library_tags(settings).sync(library, encoder)
    except (LibraryError, LabelSetError, LabelError, OSError) as exc:
        print(f"warning: tags not updated ({exc}); run check", file=sys.stderr)


def tag_problems(settings: Settings, library: Any) -> list:
    """The tags file's problems for `check` (none when the library is of another model: check says so)."""
    from .library import LibraryError

    try:
        model, ids, _ = library.tag_rows()
    except LibraryError:
        return []
    return library_tags(settings).check(model, ids)
