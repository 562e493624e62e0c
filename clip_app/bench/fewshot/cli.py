"""Few-shot top-1 of zero-shot, prototype blend, Tip-Adapter and a linear probe: `python -m clip_app.bench fewshot`.

k examples per class are drawn from DIR/train (or the ImageNet training folders) with each seed, every method is
fitted on them alone (hyper-parameters by leave-one-out / k-fold on the shots, never on val) and scored on all of
val; features are cached on disk. Writes fewshot-<model>.json, fewshot.md (the published Tip-Adapter anchors
beside) and fewshot-<model>.png.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import torch

from ...adapt import METHODS, AdaptError, parse_methods
from ...encoders import ClipEncoder
from ...images import ImageError
from ...prompts import TEMPLATE_CHOICES, family_prompts, family_templates
from ..common import ModelUnavailable, add_model_arguments, each_model
from ..features import MAX_DEFAULT_WORKERS, FeatureCache, cached_image_features, default_workers
from ..imagenet.data import DatasetError
from ..imagenet.evaluate import text_classifier
from .data import FewshotData, read_image_folder, read_imagenet_pair
from .protocol import DEFAULT_SEEDS, DEFAULT_SHOTS, Outcome, evaluate, plan_draws, torch_threads
from .report import output_stem, write_plot, write_record, write_summary
from .synthetic import synthetic_features

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The fewshot sub-command's flags."""
    parser.add_argument("--root", help="image-folder data set (DIR/train/<class>/*, DIR/val/<class>/* or "
                        "DIR/test/<class>/*; class names from the folders, '_' -> space, or DIR/classnames.json); "
                        "with --imagenet-train: the ImageNet validation folder (any layout the imagenet benchmark "
                        "reads)")
    add_model_arguments(parser)  # --model (repeatable), --device, --model-dir
    parser.add_argument("--shots", default=",".join(map(str, DEFAULT_SHOTS)),
                        help="comma-separated examples per class [default 1,2,4,8,16]")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                        help=f"draws per shot count (seeds 1..N) [default {DEFAULT_SEEDS}]")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated: zeroshot, prototype (blend of text and example mean), tip "
                        "(training-free Tip-Adapter), linear (logistic-regression probe, WiSE-mixed with the "
                        "zero-shot head) [default: all]")
    parser.add_argument("--out", default="results", help="output folder [default results/]")
    parser.add_argument("--imagenet-train", metavar="DIR",
                        help="ImageNet training folder of <wnid>/ class folders: shots come from it, --root is the "
                        "validation set, all 1000 classes")
    parser.add_argument("--devkit", help="ImageNet devkit folder when it is not under --root")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="ImageNet: evaluate on a class-balanced subset of N validation images")
    parser.add_argument("--template", choices=TEMPLATE_CHOICES,
                        help="prompt template(s) of the zero-shot head: single ('a photo of a {}.') or ensemble "
                        "(CLIP's 80) [default: ensemble for ImageNet, single otherwise]")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass [default 64]")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help=f"DataLoader worker processes [default: CPU count, at most {MAX_DEFAULT_WORKERS}]")
    parser.add_argument("--cache-dir", help="feature cache folder [default <out>/cache]")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write cached features")
    parser.add_argument("--synthetic", type=int, metavar="CLASSES",
                        help="no data set or model: made-up unit features (1,000 val images over CLASSES classes, "
                        "512-d) to time the protocol itself (--timing)")
    parser.add_argument("--timing", action="store_true", help="print seconds per method and stage")
    parser.add_argument("--app-timing", action="store_true",
                        help="time the app's path instead: add one example, then classify a library image with the "
                        "adapted head, 16 examples x 20 labels (median of 15 rounds per method; target <= 50 ms)")
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="torch CPU threads while fitting and scoring the heads (their matrices are small: more "
                        "threads mostly wait on each other on a busy machine); 0: torch's default [default 1]")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or per-run lines")


def _shots(text: str) -> tuple[int, ...]:
    try:
        shots = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise ValueError(f"--shots takes whole numbers separated by commas, got {text!r}") from None
    if not shots or shots[0] < 1:
        raise ValueError(f"--shots must be positive whole numbers, got {text!r}")
    return tuple(shots)


def run(args: argparse.Namespace) -> int:
    """Evaluate every --model; write the outputs; 0 on success, 2 on bad input."""
    try:
        shots, methods = _shots(args.shots), parse_methods(args.methods)
        if args.seeds < 1:
            raise ValueError("--seeds must be at least 1")
        if args.synthetic is None and not args.root and not args.app_timing:
            raise ValueError("--root DIR is required (or --synthetic CLASSES to time the protocol alone)")
        if args.limit is not None and args.limit < 1:
            raise ValueError("--limit must be at least 1")
        if args.threads < 0:
            raise ValueError("--threads must be 0 (torch's default) or more")
        data = None if args.synthetic is not None or args.app_timing else (
            read_imagenet_pair(args.root, args.imagenet_train, args.devkit, args.limit) if args.imagenet_train
            else read_image_folder(args.root))
    except (ValueError, DatasetError, AdaptError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.app_timing:
        return _app_timing(methods, args.threads)
    seeds = tuple(range(1, args.seeds + 1))
    out = Path(args.out)
    say = None if args.no_progress else (lambda line: print(line, flush=True))
    if data is None:
        record = _synthetic_run(args.synthetic, shots, seeds, methods, say, args.threads)
        return _finish(out, record, args.timing)
    cache = None if args.no_cache else FeatureCache(Path(args.cache_dir) if args.cache_dir else out / "cache")
    template = args.template or ("ensemble" if data.name == "imagenet" else "single")
    print(f"{data.source}: {data.n_classes} classes, {len(data.train)} train and {len(data.val)} val images; "
          f"shots {','.join(map(str, shots))} x seeds {len(seeds)}; methods {','.join(methods)}")
    try:
        for encoder, _ in each_model(args, args.batch_size):
            record = evaluate_model(encoder, data, template, shots, seeds, methods, cache,
                                    batch_size=args.batch_size, workers=args.workers,
                                    progress=not args.no_progress, say=say, threads=args.threads)
            _finish(out, record, args.timing)
    except ModelUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImageError as exc:
        print(f"error: an image of the data set cannot be read: {exc}", file=sys.stderr)
        return 2
    return 0


def evaluate_model(encoder: ClipEncoder, data: FewshotData, template: str, shots: Sequence[int],
                   seeds: Sequence[int], methods: Sequence[str], cache: FeatureCache | None, *, batch_size: int = 64,
                   workers: int = 0, progress: bool = True, say: Callable[[str], None] | None = None,
                   threads: int | None = 1) -> dict:
    """One model on one data set: features of the drawn shots and of val (cached), the zero-shot head, every
    method at every (k, seed); returns the fewshot-<model>.json record."""
    start = time.perf_counter()
    draws = plan_draws(data.train.labels, data.n_classes, shots, seeds)
    pool_files = [data.train.files[p] for p in draws.pool]
    kw = dict(batch_size=batch_size, workers=workers, progress=progress)
    train = cached_image_features(encoder, pool_files, cache, label="fewshot-train", desc=f"{encoder.name}: shots",
                                  **kw)
    val = cached_image_features(encoder, list(data.val.files), cache, label="fewshot-val",
                                desc=f"{encoder.name}: val", **kw)
    names = family_prompts(encoder.family)[0] if data.name == "imagenet" else data.classnames
    weights, text_seconds, _ = text_classifier(encoder, names, family_templates(template, encoder.family), cache,
                                               progress=progress, desc=f"{encoder.name}: class texts")
    pool_labels = torch.tensor([data.train.labels[p] for p in draws.pool], dtype=torch.long)
    outcome = evaluate(weights, train.features, pool_labels, draws, val.features,
                       torch.tensor(data.val.labels, dtype=torch.long), methods, say, threads)
    stages = {stage: train.seconds[stage] + val.seconds[stage] for stage in train.seconds}
    stages["text_encoding"] = text_seconds
    return _record(encoder.name, encoder.identity, data.name, data.source, data.classnames, len(data.val), template,
                   tuple(shots), tuple(seeds), outcome, stages, time.perf_counter() - start,
                   cached=train.cached and val.cached, n_train_encoded=len(pool_files), threads=threads)


def _synthetic_run(n_classes: int, shots: tuple[int, ...], seeds: tuple[int, ...], methods: tuple[str, ...],
                   say, threads: int) -> dict:
    start = time.perf_counter()
    feats = synthetic_features(n_classes, 2 * max(shots))  # a pool to draw from: seeds draw different shots
    draws = plan_draws(feats.train_labels.tolist(), n_classes, shots, seeds)
    pool = torch.tensor(draws.pool, dtype=torch.long)
    outcome = evaluate(feats.text_weights, feats.train[pool], feats.train_labels[pool], draws, feats.val,
                       feats.val_labels, methods, say, threads)
    return _record("synthetic", "synthetic", "synthetic", "made-up unit features (timing only)",
                   tuple(f"class {c}" for c in range(n_classes)), len(feats.val_labels), "none", shots, seeds,
                   outcome, {}, time.perf_counter() - start, cached=True, n_train_encoded=0, threads=threads)


def _record(model: str, identity: str, name: str, source: str, classnames: tuple[str, ...], n_val: int,
            template: str, shots: tuple[int, ...], seeds: tuple[int, ...], outcome: Outcome, stages: dict,
            wall: float, *, cached: bool, n_train_encoded: int, threads: int | None) -> dict:
    by_method = outcome.seconds_by_method()
    return {
        "benchmark": "fewshot",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "units": "accuracies are fractions in [0, 1]; times are seconds",
        "model": model,
        "model_identity": identity,
        "dataset": {"name": name, "source": source, "n_train_encoded": n_train_encoded},
        "template": template,
        "shots": list(shots),
        "seeds": list(seeds),
        "n_classes": len(classnames),
        "n_val": n_val,
        "image_features_cached": cached,
        "threads": threads or torch.get_num_threads(),
        "zero_shot": {"top1": outcome.zero_shot_top1},
        "methods": outcome.summary(),
        "timings": {**stages, "adaptation": sum(by_method.values()),
                    "adaptation_cpu": sum(outcome.seconds_by_method(cpu=True).values()), "per_method": by_method,
                    "total": wall},
    }


def _app_timing(methods: tuple[str, ...], threads: int) -> int:
    from .app_timing import N_LABELS, PER_LABEL, measure

    with torch_threads(threads):
        figures = measure(tuple(m for m in methods if m != "zeroshot"))
    print(f"add one example + classify a library image with the adapted head, {PER_LABEL} examples x {N_LABELS} "
          "labels, 512-d features (median ms; target <= 50 ms):")
    for method, row in figures.items():
        print(f"  {method}: add {row['add_ms']:.1f} + classify {row['classify_ms']:.1f} = {row['total_ms']:.1f} ms "
              f"(p90 {row['total_p90_ms']:.1f} ms; CPU {row['cpu_ms']:.1f} ms)")
    return 0


def _finish(out: Path, record: dict, timing: bool) -> int:
    path = write_record(out, record)
    plot = write_plot(out / f"{output_stem(record['model'])}.png", record)
    md = write_summary(out)
    print(f"wrote {path}, {plot.name}, {md.name} in {out}/")
    print(md.read_text(encoding="utf-8"))
    if timing:
        t = record["timings"]
        print("timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in t.items() if isinstance(v, float)))
        print("per method (s): " + ", ".join(f"{k} {v:.2f}" for k, v in t["per_method"].items()))
    return 0
