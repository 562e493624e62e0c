"""Flickr8k retrieval: text-to-image and image-to-text Recall@1/5/10 and median rank, with plots and a report.

`python -m clip_app.bench flickr8k --root DIR [--model M ...] [--split test] [--prefix P ...] [--out results/]`
With --text-model (and optionally --captions FILE in any language): recall per text tower (flickr8k/multilingual.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ...encoders import ClipEncoder
from ...images import ImageError
from ..common import ModelUnavailable, add_model_arguments, bench_settings, each_model
from ..features import MAX_DEFAULT_WORKERS, FeatureCache, cached_image_features, default_workers, text_features_key
from ..output import model_slug, write_text
from ..timing import StageTimer
from .analysis import GALLERY_SIZES, gallery_size_curve, pick_examples, recall_by_length
from .data import SPLITS, DatasetError, Flickr8k, load_flickr8k
from .metrics import DEFAULT_KS, image_to_text_ranks, summarize, text_to_image_ranks
from .plots import (
    draw_grid,
    image_to_text_rows,
    plot_caption_length,
    plot_gallery_size,
    plot_prefixes,
    text_to_image_rows,
)
from .report import markdown_report, reference_for, summary_markdown, write_json

log = logging.getLogger(__name__)

DEFAULT_PREFIXES = ("", "a photo of ")
TEXT_CHUNK = 1024
STAGE_ORDER = ("read_dataset", "load_model", "data_loading", "image_encoding", "text_encoding", "scoring", "analysis",
               "plots")


@dataclass
class Flickr8kOptions:
    """How to evaluate one model on one split, and where the results go."""

    out: Path = Path("results")
    prefixes: tuple[str, ...] = DEFAULT_PREFIXES
    cache_dir: Path | None = None  # default: <out>/cache
    batch_size: int = 64
    workers: int = 2
    gallery_sizes: tuple[int, ...] = GALLERY_SIZES
    subsets: int = 5
    seed: int = 0
    examples: int = 3
    ks: tuple[int, ...] = DEFAULT_KS
    progress: bool = True
    extra_timings: dict[str, float] = field(default_factory=dict)  # stages shared by all models (reading the data)

    @property
    def cache(self) -> FeatureCache:
        return FeatureCache(self.cache_dir or self.out / "cache")


def image_features(encoder: ClipEncoder, data: Flickr8k, options: Flickr8kOptions,
                   timer: StageTimer) -> tuple[torch.Tensor, str]:
    """Unit features of the split's images [I, D], from the cache when the files and model are unchanged."""
    found = cached_image_features(encoder, data.image_paths, options.cache, label="flickr8k-images",
                                  batch_size=options.batch_size, workers=options.workers, timer=timer,
                                  desc=f"Flickr8k images ({encoder.name})", progress=options.progress,
                                  meta={"images": list(data.images)})
    return found.features, "hit" if found.cached else "miss"


def caption_features(encoder: ClipEncoder, texts: list[str], prefix: str, options: Flickr8kOptions,
                     timer: StageTimer) -> tuple[torch.Tensor, str]:
    """Unit features of the (prefixed) captions [T, D], cached on disk by model, precision, prefix and captions."""
    key = text_features_key(encoder, texts, purpose=f"flickr8k-captions\0{prefix}")
    cached = options.cache.load("flickr8k-captions", key)
    if cached is not None and cached.shape == (len(texts), encoder.dim):
        return cached.float(), "hit"
    rows = []
    with timer.stage("text_encoding"), tqdm(total=len(texts), desc=f"captions {prefix!r}", unit="text",
                                            disable=not options.progress) as bar:
        for start in range(0, len(texts), TEXT_CHUNK):
            rows.append(encoder.encode_texts(texts[start:start + TEXT_CHUNK]))
            bar.update(len(rows[-1]))
    features = torch.cat(rows) if rows else torch.empty(0, encoder.dim)
    options.cache.save("flickr8k-captions", key, features, {"model": encoder.identity, "dtype": str(encoder.dtype),
                                                            "prefix": prefix})
    return features, "miss"


@dataclass
class PrefixRun:
    """Caption features [T, D] and ranks of one prefix, with its metrics row for the JSON."""

    texts: torch.Tensor
    t2i: torch.Tensor
    i2t: torch.Tensor
    row: dict
    cache: str


def score_prefix(encoder: ClipEncoder, data: Flickr8k, images: torch.Tensor, prefix: str,
                 options: Flickr8kOptions) -> PrefixRun:
    """Encode the captions with `prefix` and rank both directions against images [I, D]."""
    stages = StageTimer()
    owner = torch.tensor(data.caption_image, dtype=torch.long)
    texts, cache = caption_features(encoder, [prefix + c for c in data.captions], prefix, options, stages)
    with stages.stage("scoring"):
        t2i = text_to_image_ranks(texts, images, owner)
        i2t = image_to_text_ranks(images, texts, owner)
    row = {"prefix": prefix, "text_to_image": summarize(t2i, options.ks), "image_to_text": summarize(i2t, options.ks),
           "timings": stages.as_dict()}
    return PrefixRun(texts, t2i, i2t, row, cache)


def write_figures(name: str, data: Flickr8k, images: torch.Tensor, run: PrefixRun, prefix: str, result: dict,
                  options: Flickr8kOptions) -> dict[str, str]:
    """The grids and plots of one model; returns {description: file name in options.out}."""
    out, slug = Path(options.out), model_slug(name)
    t2i_ok, t2i_bad = pick_examples(run.t2i, options.examples, options.seed)
    i2t_ok, i2t_bad = pick_examples(run.i2t, options.examples, options.seed)
    rows = (text_to_image_rows(data, run.texts, images, t2i_ok, "success", prefix)
            + text_to_image_rows(data, run.texts, images, t2i_bad, "failure", prefix))
    figures = {"text-to-image top-5, successes and failures": draw_grid(
        out / f"flickr8k-{slug}-text-to-image-examples.png", rows,
        f"{name}: text \u2192 image top-5 (green = the caption's image)").name}
    rows = (image_to_text_rows(data, images, run.texts, i2t_ok, "success", prefix)
            + image_to_text_rows(data, images, run.texts, i2t_bad, "failure", prefix))
    figures["image-to-text top-5, successes and failures"] = draw_grid(
        out / f"flickr8k-{slug}-image-to-text-examples.png", rows,
        f"{name}: image \u2192 text top-5 (green = one of the image's captions)").name
    if result["gallery_size"]:
        figures["recall against gallery size"] = plot_gallery_size(
            out / f"flickr8k-{slug}-gallery-size.png", result["gallery_size"],
            f"{name}: Flickr8k {data.split}, recall vs gallery size", options.ks).name
    figures["text-to-image recall by caption length"] = plot_caption_length(
        out / f"flickr8k-{slug}-caption-length.png", result["caption_length"],
        f"{name}: text \u2192 image recall by caption length").name
    figures["effect of the caption prefix"] = plot_prefixes(
        out / f"flickr8k-{slug}-prefixes.png", result["prefixes"], f"{name}: caption prefixes", options.ks).name
    return figures


def evaluate(encoder: ClipEncoder, data: Flickr8k, options: Flickr8kOptions,
             timer: StageTimer | None = None) -> dict:
    """Evaluate one model on one split for every prefix, write its JSON, Markdown and figures; return the JSON."""
    timer = timer or StageTimer()
    started = time.perf_counter()
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = model_slug(encoder.name)
    images, image_cache = image_features(encoder, data, options, timer)
    runs = [score_prefix(encoder, data, images, prefix, options) for prefix in options.prefixes]
    first, headline = runs[0], options.prefixes[0]
    result: dict = {"prefixes": [run.row for run in runs]}
    with timer.stage("analysis"):
        result["gallery_size"] = gallery_size_curve(images, first.texts, torch.tensor(data.caption_image),
                                                    options.gallery_sizes, options.subsets, options.seed, options.ks)
        result["caption_length"] = recall_by_length(first.t2i, data.captions, ks=options.ks)
    with timer.stage("plots"):
        figures = write_figures(encoder.name, data, images, first, headline, result, options)
    measured = {**options.extra_timings, **timer.as_dict(), **first.row["timings"]}
    timings = {k: measured.pop(k) for k in STAGE_ORDER if k in measured} | measured
    timings["total"] = (sum(options.extra_timings.values()) + timer.seconds.get("load_model", 0.0)
                        + time.perf_counter() - started)
    encoding = timer.seconds.get("image_encoding", 0.0) + timer.seconds.get("data_loading", 0.0)
    result = {
        "benchmark": "flickr8k", "model": encoder.name, "model_identity": encoder.identity, "dim": encoder.dim,
        "device": encoder.device, "backend": encoder.backend, "precision": encoder.precision,
        "root": str(data.root), "layout": data.layout, "split": data.split,
        "split_source": data.split_source, "n_images": data.n_images, "n_captions": data.n_captions,
        "prefix": headline, "text_to_image": first.row["text_to_image"], "image_to_text": first.row["image_to_text"],
        "timings": timings, "images_per_second": data.n_images / encoding if encoding else None,
        "reference": reference_for(encoder.name), **result,
        "cache": {"images": image_cache, "texts": {run.row["prefix"]: run.cache for run in runs}},
        "figures": figures,
    }
    write_json(out / f"flickr8k-{slug}.json", result)
    (out / f"flickr8k-{slug}.md").write_text(markdown_report(result), encoding="utf-8")
    return result


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `python -m clip_app.bench flickr8k`."""
    parser.add_argument("--root", required=True, help="the Flickr8k folder (original, Kaggle or captions.json layout)")
    add_model_arguments(parser)
    parser.add_argument("--split", default="test", choices=SPLITS, help="which split to evaluate [default test]")
    parser.add_argument("--prefix", action="append", help="text put before every caption; repeat to compare several; "
                        "the first is the headline [default: '' and 'a photo of ']")
    parser.add_argument("--batch-size", type=_positive, default=64, help="images per forward pass [default 64]")
    parser.add_argument("--workers", type=_non_negative, default=default_workers(),
                        help=f"image decoding processes [default: CPU count, at most {MAX_DEFAULT_WORKERS}]")
    parser.add_argument("--out", default="results", help="folder for the JSON, Markdown and PNG files [results/]")
    parser.add_argument("--cache-dir", help="feature cache folder [default <out>/cache]")
    parser.add_argument("--gallery-sizes", type=_positive, nargs="+", default=list(GALLERY_SIZES),
                        help="gallery sizes for the recall-vs-size plot [100 250 500 1000]")
    parser.add_argument("--subsets", type=_positive, default=5, help="random subsets per gallery size [5]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsets and the example picks [0]")
    parser.add_argument("--examples", type=_non_negative, default=3,
                        help="successes and failures shown per direction in the grids [3]")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--captions", help="with --text-model: a captions file in any language for the split's "
                        "images: captions.json or Flickr8k-CN lines `<image>#<n> <caption>`")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark for every --model; print the headline numbers; 0 on success, 2 on bad input."""
    reading = StageTimer()
    try:
        with reading.stage("read_dataset"):
            data = load_flickr8k(args.root, args.split)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    prefixes = tuple(dict.fromkeys(args.prefix)) if args.prefix else DEFAULT_PREFIXES
    out = Path(args.out)
    options = Flickr8kOptions(out=out, prefixes=prefixes, cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                              batch_size=args.batch_size, workers=args.workers, gallery_sizes=tuple(args.gallery_sizes),
                              subsets=args.subsets, seed=args.seed, examples=args.examples,
                              progress=not args.no_progress, extra_timings=reading.as_dict())
    text_model = args.text_model or bench_settings(args).text_model
    if text_model or args.captions:
        from .multilingual import run as run_towers

        if not text_model:
            print("error: --captions needs --text-model (the captions are read by each text tower)", file=sys.stderr)
            return 2
        return run_towers(args, data, options, text_model)
    results = []
    try:
        for encoder, timer in each_model(args, args.batch_size):
            try:
                result = evaluate(encoder, data, options, timer)
            except (ImageError, OSError) as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            results.append(result)
            t2i, i2t = result["text_to_image"], result["image_to_text"]
            print(f"{encoder.name} Flickr8k {data.split} ({data.n_images} images, {data.n_captions} captions, "
                  f"prefix {options.prefixes[0]!r}): text->image R@1 {t2i['R@1']:.4f} R@5 {t2i['R@5']:.4f} "
                  f"R@10 {t2i['R@10']:.4f} | image->text R@1 {i2t['R@1']:.4f} R@5 {i2t['R@5']:.4f} "
                  f"R@10 {i2t['R@10']:.4f}")
    except ModelUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_text(out / "flickr8k-summary.md", summary_markdown(results))
    print(f"results written to {out}/")
    return 0
