"""Flickr8k retrieval with captions in any language, per text tower: CLIP's own against a multilingual one.

`python -m clip_app.bench flickr8k --root DIR --text-model NAME_OR_PATH [--captions FILE] [--text-routing auto]`

The same images (encoded once by the image model) are ranked against the same captions read by each tower: 'clip'
(CLIP's own text tower), 'multilingual' (the --text-model) and 'routed' (each caption to the tower --text-routing
picks: what the app does). Captions come from the data set itself (a captions.json in Chinese beside images/ works
as is) or from --captions FILE: a captions.json (a list of {"image", "captions"}) or lines in the Flickr8k-CN layout,
`<image>#<n> <caption>` (also `<image>#<tag>#<n>`, tab or space, the image with or without its .jpg).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from ...encoders import ClipEncoder, RoutedTextEncoder
from ..output import model_slug
from ..timing import StageTimer
from .data import DatasetError, Flickr8k, read_captions_json
from .metrics import image_to_text_ranks, summarize, text_to_image_ranks
from .report import write_json

if TYPE_CHECKING:  # pragma: no cover
    from .cli import Flickr8kOptions

log = logging.getLogger(__name__)

TOWERS = ("clip", "multilingual", "routed")
TEXT_CHUNK = 256
_CN_LINE = re.compile(r"^(?P<image>[^#\s]+)#(?:[A-Za-z-]+#)?(?P<n>\d+)\s+(?P<caption>\S.*)$")


def read_caption_lines(path: Path) -> dict[str, list[str]]:
    """Flickr8k-CN layout: `<image>#<n> <caption>` lines (or `<image>#<tag>#<n>`) -> {image: captions in #n order};
    other lines are skipped with a warning."""
    numbered: dict[str, list[tuple[int, str]]] = defaultdict(list)
    bad = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read the captions file {path}: {exc}") from exc
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _CN_LINE.match(line.strip())
        if match is None:
            bad.append(number)
            continue
        numbered[match["image"]].append((int(match["n"]), match["caption"].strip()))
    if bad:
        log.warning("%s: %d line(s) are not `<image>#<n> <caption>` and were skipped (e.g. line %d)", path, len(bad),
                    bad[0])
    return {image: [c for _, c in sorted(items, key=lambda x: x[0])] for image, items in numbered.items()}


def read_captions_file(path: str | Path) -> dict[str, list[str]]:
    """A captions file in any language: captions.json or Flickr8k-CN lines -> {image: captions}."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"captions file not found: {path}")
    if path.suffix.lower() == ".json":
        return read_captions_json(path)[0]
    return read_caption_lines(path)


def with_captions(data: Flickr8k, captions: dict[str, list[str]], source: str) -> Flickr8k:
    """The split's images that have captions in `captions` (matched by file name without extension),
    with those captions instead of the data set's own. DatasetError when no image has any."""
    by_stem: dict[str, list[str]] = defaultdict(list)
    for name, own in captions.items():
        by_stem[Path(name).stem].extend(own)
    images, texts, owner = [], [], []
    for name in data.images:
        own = by_stem.get(Path(name).stem)
        if not own:
            continue
        owner.extend([len(images)] * len(own))
        texts.extend(own)
        images.append(name)
    if not images:
        raise DatasetError(f"none of the {data.n_images} images of the {data.split!r} split has a caption in {source}")
    if len(images) < data.n_images:
        log.warning("%d of the %d images of the %s split have no caption in %s and are left out",
                    data.n_images - len(images), data.n_images, data.split, source)
    return dataclasses.replace(data, images=tuple(images), captions=tuple(texts), caption_image=tuple(owner))


def _encode(encoder: object, texts: list[str], desc: str, progress: bool) -> torch.Tensor:
    rows = []
    with tqdm(total=len(texts), desc=desc, unit="text", disable=not progress) as bar:
        for start in range(0, len(texts), TEXT_CHUNK):
            rows.append(encoder.encode_texts(texts[start:start + TEXT_CHUNK]).float())  # type: ignore[attr-defined]
            bar.update(len(rows[-1]))
    return torch.cat(rows)


def evaluate_towers(encoder: ClipEncoder, text: RoutedTextEncoder, data: Flickr8k, images: torch.Tensor, *,
                    out: Path, ks: tuple[int, ...] = (1, 5, 10), progress: bool = True,
                    captions_source: str = "the data set") -> dict:
    """Recall per tower on the same image features [I, D] and captions; writes flickr8k-multilingual-<slug>.json
    and .md into `out`; returns the JSON."""
    owner = torch.tensor(data.caption_image, dtype=torch.long)
    captions = list(data.captions)
    timer = StageTimer()
    features: dict[str, torch.Tensor] = {}
    with timer.stage("text_encoding_clip"):
        features["clip"] = _encode(text.clip_tower, captions, "captions (CLIP's tower)", progress)
    with timer.stage("text_encoding_multilingual"):
        features["multilingual"] = _encode(text.multilingual, captions, "captions (multilingual)", progress)
    picks = [text.tower_for(c) for c in captions]
    features["routed"] = torch.stack([features[p][i] for i, p in enumerate(picks)])
    towers = {}
    with timer.stage("scoring"):
        for tower in TOWERS:
            t2i = text_to_image_ranks(features[tower], images, owner)
            i2t = image_to_text_ranks(images, features[tower], owner)
            towers[tower] = {"text_to_image": summarize(t2i, ks), "image_to_text": summarize(i2t, ks)}
    result = {
        "benchmark": "flickr8k-multilingual", "model": encoder.name, "model_identity": encoder.identity,
        "text_model": text.multilingual.name, "text_model_identity": text.multilingual.identity,
        "routing": text.routing, "routed_to_multilingual": sum(p == "multilingual" for p in picks),
        "split": data.split, "n_images": data.n_images, "n_captions": data.n_captions, "captions": captions_source,
        "towers": towers, "timings": timer.as_dict(),
    }
    out.mkdir(parents=True, exist_ok=True)
    slug = model_slug(f"{encoder.name}-{text.multilingual.name}")
    write_json(out / f"flickr8k-multilingual-{slug}.json", result)
    (out / f"flickr8k-multilingual-{slug}.md").write_text(markdown(result), encoding="utf-8")
    return result


def markdown(result: dict) -> str:
    """The per-tower recall table of one run."""
    names = {"clip": f"CLIP {result['model']} (own text tower)", "multilingual": result["text_model"],
             "routed": f"routed ({result['routing']}: {result['routed_to_multilingual']} of {result['n_captions']} "
                       "captions to the multilingual tower)"}
    lines = [f"# Flickr8k {result['split']}: recall per text tower", "",
             f"{result['n_images']} images encoded once by {result['model']}; {result['n_captions']} captions from "
             f"{result['captions']}.", "",
             "| text tower | T→I R@1 | T→I R@5 | T→I R@10 | I→T R@1 | I→T R@5 | I→T R@10 |",
             "|---|---|---|---|---|---|---|"]
    for tower, row in result["towers"].items():
        t2i, i2t = row["text_to_image"], row["image_to_text"]
        cells = [t2i.get(f"R@{k}", float("nan")) for k in (1, 5, 10)] + [i2t.get(f"R@{k}", float("nan"))
                                                                           for k in (1, 5, 10)]
        lines.append(f"| {names[tower]} | " + " | ".join(f"{100 * c:.1f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def headline(result: dict) -> str:
    """One line per tower for the terminal."""
    rows = []
    for tower, row in result["towers"].items():
        t2i, i2t = row["text_to_image"], row["image_to_text"]
        rows.append(f"  {tower:<12} text->image R@1 {t2i['R@1']:.4f} R@5 {t2i['R@5']:.4f} R@10 {t2i['R@10']:.4f} | "
                    f"image->text R@1 {i2t['R@1']:.4f} R@5 {i2t['R@5']:.4f} R@10 {i2t['R@10']:.4f}")
    return "\n".join(rows)


def run(args: argparse.Namespace, data: Flickr8k, options: Flickr8kOptions, text_model: str) -> int:
    """The per-tower run of `python -m clip_app.bench flickr8k --text-model ...` for every --model; 0, or 2 on bad
    input (the message on stderr)."""
    from ...encoders import ModelLoadError, routed_text_encoder
    from ...images import ImageError
    from ..common import ModelUnavailable, bench_settings, each_model
    from .cli import image_features

    source = "the data set"
    try:
        if args.captions:
            data = with_captions(data, read_captions_file(args.captions), str(args.captions))
            source = str(args.captions)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model_dir = bench_settings(args).model_dir
    try:
        for encoder, timer in each_model(args, args.batch_size):
            with timer.stage("load_model"):
                text = routed_text_encoder(encoder, text_model, args.text_routing or "auto", encoder.device,
                                           str(model_dir) if model_dir else None)
            if text is None:
                raise ModelUnavailable("no text model")
            images, _ = image_features(encoder, data, options, timer)
            result = evaluate_towers(encoder, text, data, images, out=Path(options.out),
                                     progress=not args.no_progress, captions_source=source)
            print(f"{encoder.name} + {text.multilingual.name} Flickr8k {data.split} ({data.n_images} images, "
                  f"{data.n_captions} captions from {source}):\n{headline(result)}")
    except (ModelUnavailable, ModelLoadError, ValueError, ImageError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"results written to {options.out}/")
    return 0
