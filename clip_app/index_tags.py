"""The index manager's classify, search and tag commands (`python -m clip_app.index classify|search|tag ...`, and
`list --tag`); registered by index.build_parser. JSON shapes are documented in docs/cli.md. The `labels` commands
(add, list, remove, rename, example, examples) are index_labels.py's LABEL_COMMANDS.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

from .classify import ClassifierCache, parse_labels, rank
from .config import Settings
from .images import decode_image, read_bytes
from .index_labels import store_of as label_store
from .library.pg_store import tag_file
from .library.tags import LibraryTags, as_json, parse_threshold_for
from .prompts import family_templates

__all__ = ["label_store", "add_parsers", "library_tags", "list_tagged", "sync_tags", "tag_problems"]


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
    texts = text_encoder_of(settings, encoder)  # labels read as the app reads them (--text-model routing)
    from .service import label_templates

    per_label = label_templates(texts if texts is not encoder else None, labels, template, templates)
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
            weights = ClassifierCache().get(texts, labels, per_label)
        feature = encoder.encode_images([picture])[0]
        scores = rank(labels, feature, weights)
        item = {"image": path, "labels": [{"label": s.label, "probability": s.probability, "cosine": s.cosine}
                                          for s in scores]}
        if args.allow_none:
            from .prompts import NEUTRAL_LABEL, NEUTRAL_PROMPTS

            neutral = ClassifierCache().get(texts, [NEUTRAL_LABEL], NEUTRAL_PROMPTS)[:, 0]
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


def text_encoder_of(settings: Settings, encoder: Any) -> Any:
    """The encoder of texts: CLIP's own (the encoder), or the --text-model pair routed per text."""
    if not settings.text_model:
        return encoder
    from .encoders import routed_text_encoder

    return routed_text_encoder(encoder, settings.text_model, settings.text_routing, encoder.device,
                               str(settings.model_dir) if settings.model_dir else None)


def open_app(args: argparse.Namespace | None, settings: Settings, encoder: Any, library: Any = None) -> Any:
    """An App over the library of these settings (for search, tag, list --tag and keeping tags in step), with the
    --text-model tower when one is given (texts are read as the app reads them)."""
    from .index import open_library
    from .service import App

    if library is None:
        library = open_library(args, settings, encoder)
    texts = text_encoder_of(settings, encoder)
    text_encoder = None if texts is encoder else texts
    return App(encoder, library, label_store(settings), tag_threshold=settings.tag_threshold,
               confidence_rule=settings.confidence_rule(), text_encoder=text_encoder)


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
    """Add classify, search and tag to the index manager's sub-commands; their handlers by name."""
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
    return {"classify": cmd_classify, "search": cmd_search, "tag": cmd_tag}


# ---- keeping tags in step with the library commands -------------------------------------------------------------
def library_tags(settings: Settings, library: Any = None, encoder: Any = None) -> LibraryTags:
    """The tags of the library of these settings; given the library and encoder, the App's (its classifiers: text
    routing, Chinese templates, few-shot examples), else one that only reads and checks."""
    if library is not None and encoder is not None:
        return open_app(None, settings, encoder, library).tags
    return LibraryTags(tag_file(None, settings.library_file), label_store(settings), ClassifierCache(),
                       settings.tag_threshold)


def sync_tags(settings: Settings, library: Any, encoder: Any) -> None:
    """After add, remove or rebuild: tag new images (and forget removed ones) for every tagged set. A failure is a
    warning on stderr (check reports it, repair fixes it), never the command's failure."""
    import sys

    from .classify import LabelError
    from .label_sets import LabelSetError
    from .library import LibraryError

    try:
        library_tags(settings, library, encoder).sync(library, encoder)
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
