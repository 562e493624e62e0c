"""Zero-shot ImageNet-1k top-1/top-5 with timings: `python -m clip_app.bench imagenet --root DIR --model M ...`.

Reads the validation set in any of three layouts (official + devkit, torchvision val/<wnid>/, Kaggle), encodes
the images once per model (cached on disk), scores the prompt modes raw / single / ensemble against all 1000
classes and writes JSON, results.csv rows, a log, a Markdown table with the published numbers, a bar chart and
a grid of misclassified images.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from ...encoders import ClipEncoder
from ...images import ImageError
from ...prompts import family_prompts
from ..common import ModelUnavailable, add_model_arguments, each_model
from ..features import MAX_DEFAULT_WORKERS, FeatureCache, default_workers
from ..output import append_csv, write_text
from .data import DatasetError, ImagenetSet, limit_set, read_imagenet
from .evaluate import MODES, ModelResult, evaluate_model, mode_prompts, parse_modes
from .report import csv_rows, log_text, misclassified_grid, model_record, output_stem, write_summary

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The imagenet sub-command's flags."""
    parser.add_argument("--root", required=True, help="ImageNet validation folder (official release + devkit, "
                        "torchvision val/<wnid>/, or the Kaggle challenge folder; detected automatically)")
    add_model_arguments(parser)
    parser.add_argument("--prompts", default=",".join(MODES),
                        help="comma-separated prompt modes: raw (WordNet words), single ('a photo of a {}.'), "
                        "ensemble (80 templates) [default: raw,single,ensemble]")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="use a class-balanced, deterministic subset of N images (quick runs on a CPU)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"images per forward pass [default {DEFAULT_BATCH_SIZE}]")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="DataLoader worker processes decoding images [default: CPU count, at most "
                        f"{MAX_DEFAULT_WORKERS}]")
    parser.add_argument("--out", default="results", help="output folder [default results/]")
    parser.add_argument("--cache-dir", help="feature cache folder [default <out>/cache]")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write cached features")
    parser.add_argument("--devkit", help="folder holding the devkit's ILSVRC2012_validation_ground_truth.txt and "
                        "meta.mat when it is not under --root")
    parser.add_argument("--errors", type=int, default=16, metavar="N",
                        help="misclassified examples in the error grid PNG (0: no grid) [default 16]")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Evaluate every --model on the data set; write the outputs; 0 on success, 2 on bad input."""
    try:
        modes = parse_modes(args.prompts)
        if args.limit is not None and args.limit < 1:
            raise ValueError("--limit must be at least 1")
        if args.batch_size < 1 or args.workers < 0:
            raise ValueError("--batch-size must be at least 1 and --workers at least 0")
        dataset = read_imagenet(args.root, args.devkit)
    except (ValueError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    full = len(dataset)
    dataset = limit_set(dataset, args.limit)
    out = Path(args.out)
    cache = None if args.no_cache else FeatureCache(Path(args.cache_dir) if args.cache_dir else out / "cache")
    print(f"ImageNet {dataset.layout} layout in {dataset.root}: {len(dataset)} images"
          + (f" (class-balanced subset of {full})" if len(dataset) < full else "")
          + f" of {len(dataset.classes_present)} classes, scored against all 1000 classes")
    if "raw" in modes:
        print(f"raw prompts (WordNet words) from: {dataset.raw_names_source}")
    try:
        for encoder, _ in each_model(args, args.batch_size):
            if not _evaluate_one(encoder, dataset, modes, cache, out, args):
                return 2
    except ModelUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    md, chart = write_summary(out)
    print(f"wrote {out}/: imagenet-*.json, imagenet-*.log, results.csv, {md.name}, {chart.name}"
          + (", imagenet-*-errors.png" if args.errors > 0 else ""))
    print(md.read_text())
    return 0


def _evaluate_one(encoder: ClipEncoder, dataset: ImagenetSet, modes: Sequence[str], cache: FeatureCache | None,
                  out: Path, args: argparse.Namespace) -> bool:
    """Evaluate one model and write its outputs; False (after saying why) when an image cannot be read."""
    try:
        result = evaluate_model(encoder, dataset, modes, cache=cache, batch_size=args.batch_size,
                                workers=args.workers, progress=not args.no_progress)
    except ImageError as exc:
        print(f"error: an image of the data set cannot be read: {exc}", file=sys.stderr)
        return False
    record = model_record(result, dataset, args.limit)
    record.update(backend=encoder.backend, precision=encoder.precision)
    stem = output_stem(result.model)
    write_text(out / f"{stem}.json", json.dumps(record, indent=2) + "\n")
    append_csv(out / "results.csv", csv_rows(record))
    text = log_text(record)
    write_text(out / f"{stem}.log", text)
    print(text, end="")
    if args.errors > 0:
        write_error_grid(out / f"{stem}-errors.png", result, dataset, modes, args.errors, encoder.family)
    return True


def write_error_grid(path: Path, result: ModelResult, dataset: ImagenetSet, modes: Sequence[str],
                     count: int, family: str = "clip") -> Path:
    """The misclassified grid for the best prompt mode run (ensemble > single > raw)."""
    mode = modes[-1]
    curated, templates, _ = family_prompts(family)
    names, _ = mode_prompts(mode, curated, dataset.raw_names, templates)
    return misclassified_grid(path, result, dataset, mode, names, count)
