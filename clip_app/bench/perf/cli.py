"""Performance: our overhead against the model's own speed (indexing, classify, search, library, cold start).

`python -m clip_app.bench perf [--model ViT-B/32] [--device D] [--sizes 1000,10000,100000,1000000] [--repeats 3]
[--json out.json] [--quick]`. Each figure is the median over repeats with its spread; the targets of the
performance issue are checked at the end. A model name gets random weights of its real architecture (timing
only: speed does not depend on the weight values); --model PATH times a real checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import tempfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from ...config import DEFAULT_MODEL, Settings, add_backend_arguments, resolve_device
from ...encoders import DEFAULT_BATCH_SIZE
from ...service import DEFAULT_K
from . import app as perf_app
from . import backends as perf_backends
from . import encode as perf_encode
from . import library as perf_library
from . import multilingual as perf_multilingual
from . import search as perf_search
from . import tags as perf_tags
from . import thumbs as perf_thumbs
from .setup import ARCHITECTURES, load_encoder, write_photos
from .stats import Results, Target, format_table, format_targets, load_average

log = logging.getLogger(__name__)

SECTIONS = ("forward", "index", "classify", "search", "library", "tags", "app", "page", "backends",
            "multilingual")
#: run unless --only says otherwise; 'multilingual' (it builds a 540 MB random-weight text tower and starts the app
#: twice per repeat) runs when named: --only multilingual
DEFAULT_SECTIONS = SECTIONS[:-1]
DEFAULT_SIZES = "1000,10000,100000,1000000"
QUICK_SIZES = "300,3000"
LIBRARY_SIZE = 100_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The perf sub-command's flags."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"architecture to time with random weights ({', '.join(ARCHITECTURES)}, or "
                        "open_clip:ARCH, cn_clip:ARCH), a checkpoint file, or FAMILY:ARCH@FILE "
                        f"(default {DEFAULT_MODEL})")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N [env CLIP_APP_DEVICE; default auto]")
    parser.add_argument("--sizes", default=None,
                        help=f"library sizes (rows) for search, comma-separated (default {DEFAULT_SIZES}; "
                        f"--quick: {QUICK_SIZES})")
    parser.add_argument("--library-size", type=int, default=None,
                        help=f"rows of the library that one image is added to (default {LIBRARY_SIZE:,}; --quick: "
                        "the largest of --sizes)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per figure (default 3; --quick: 2)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"images per forward pass, as the library batches them (default {DEFAULT_BATCH_SIZE}; "
                        "--quick: 4)")
    parser.add_argument("--k", type=int, default=DEFAULT_K,
                        help=f"results per search (default {DEFAULT_K}, the app's default)")
    parser.add_argument("--only", default=",".join(DEFAULT_SECTIONS),
                        help=f"comma-separated sections to run, of {','.join(SECTIONS)} (default all but "
                        "multilingual)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--workdir", default=None,
                        help="folder for the random checkpoint, photos and libraries (default: a temporary folder, "
                        "removed afterwards; a given folder is kept and its checkpoint reused)")
    add_backend_arguments(parser)
    parser.add_argument("--backends", default="torch,onnx",
                        help="the backends section compares these on the CPU: torch, onnx, int8 (ONNX Runtime int8), "
                        "comma-separated (default torch,onnx)")
    parser.add_argument("--json", dest="json_out", default=None, help="write every figure and target to this file")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and few repeats, to check that the harness works (numbers mean little)")


@contextmanager
def work_folder(given: str | None) -> Iterator[Path]:
    """The given folder (kept) or a temporary one (removed)."""
    if given:
        path = Path(given).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="clip-perf-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def parse_sizes(text: str) -> list[int]:
    """'1000,10000' -> [1000, 10000] (sorted, positive, no repeats)."""
    try:
        sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"--sizes must be comma-separated whole numbers, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise ValueError(f"--sizes needs positive row counts, got {text!r}")
    return sizes


def targets(sizes: list[int], library_size: int, pipeline: str) -> list[Target]:
    """The issue's targets, tied to the figure keys of this run."""
    at = 100_000 if 100_000 in sizes else max(sizes)
    return [
        Target("indexing 500x375 JPEGs: forward passes' share of the pipeline's time (= speed / forward speed)",
               f"index.small.{pipeline}.share", ">=", 0.90),
        Target("classify, cached label set / its own image forward pass", "classify.cached.in_run", "<=", 1.3),
        Target(f"top-k alone at {at:,} rows", f"search.topk.{at}", "<=", 0.015),
        Target(f"text query at {at:,} rows / its own text forward pass", f"search.query.{at}.in_run", "<=", 1.3),
        Target(f"add one image to a {library_size:,}-row library, without the forward pass",
               f"library.add_one.{library_size}", "<=", 0.5),
        Target("a bulk add saves the library file once", f"library.bulk_add.saves.{library_size}", "<=", 1),
        Target("gallery page of camera photos: thumbnail bytes / full-file bytes", "app.page.bytes.ratio", "<=", 0.05),
        Target("gallery page of camera photos: thumbnail page time / full-file page time", "app.page.seconds.ratio",
               "<=", 0.99),
        Target(f"tag {library_size:,} rows with a 20-label set (text encoding excluded)",
               f"tags.compute.{library_size}", "<=", 0.5),
        Target(f"list one tag at {library_size:,} rows", f"tags.list.{library_size}", "<=", 0.05),
        Target(f"search with percentiles and confidence at {library_size:,} rows / top-k alone",
               f"search.confidence.{library_size}.ratio", "<=", 1.10),
    ]


def environment(device: str, checkpoint: str | Path, random_weights: bool, model: str) -> dict:
    """What the figures depend on: machine, threads, library versions, GPU."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "model": model, "checkpoint": str(checkpoint), "random_weights": random_weights, "device": device,
        "gpu": gpu, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(), "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()} {platform.processor() or ''}".strip(),
    }


def run(args: argparse.Namespace) -> int:
    """Run the chosen sections, print the table and the targets, write JSON; 1 when a section failed."""
    quick = bool(args.quick)
    sizes = parse_sizes(args.sizes or (QUICK_SIZES if quick else DEFAULT_SIZES))
    repeats = max(1, args.repeats or (2 if quick else 3))
    batch = max(1, args.batch_size or (4 if quick else DEFAULT_BATCH_SIZE))
    library_size = args.library_size or (max(sizes) if quick else LIBRARY_SIZE)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    for noisy in ("clip_app.library", "httpx"):  # one line per added image / HTTP request
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device or Settings.from_env().device)
    backends = perf_backends.parse_backends(args.backends)
    load_start = load_average()
    started = time.time()
    results = Results()
    failed: list[str] = []
    with work_folder(args.workdir) as work:
        encoder, checkpoint, random_weights = load_encoder(
            args.model, device, work, batch, backend=args.backend or os.environ.get("CLIP_APP_BACKEND") or "auto",
            precision=args.precision or os.environ.get("CLIP_APP_PRECISION") or "fp32")
        meta = environment(device, checkpoint, random_weights, args.model)
        meta.update(sizes=sizes, repeats=repeats, batch_size=batch, k=args.k, library_size=library_size,
                    quick=quick, sections=only, load_average_start=load_start)
        print(banner(meta, encoder.name))
        photos = make_photos(work / "photos", batch, repeats, quick) if {"index", "classify", "library", "app",
                                                                         "multilingual"} & set(only) else {}
        pipeline = "library_add"
        steps: dict[str, Callable[[], None]] = {
            "forward": lambda: perf_encode.measure_forward(encoder, batch, repeats, results),
            "index": lambda: perf_encode.measure_indexing(
                encoder, {"small": photos["small"], "large": photos["large"]}, batch, repeats, results, work),
            "classify": lambda: perf_encode.measure_classify(encoder, photos["classify"][0], repeats, results,
                                                             work, batch),
            "search": lambda: perf_search.measure_search(encoder, sizes, repeats, args.k, results),
            "library": lambda: perf_library.measure_library(encoder, sizes, library_size, photos["library"], batch,
                                                            repeats, args.k, results, work),
            "tags": lambda: perf_tags.measure_tags(encoder, library_size, repeats, args.k, results),
            "app": lambda: perf_app.measure_cold_start(checkpoint, photos["classify"][0], 1 if quick else repeats,
                                                       results, work),
            "multilingual": lambda: perf_multilingual.measure_multilingual(
                encoder, checkpoint, photos["classify"][0], sizes, repeats, args.k, results, work,
                1 if quick else min(repeats, 3)),
            "page": lambda: perf_thumbs.measure_gallery_page(
                encoder, repeats, results, work, count=8 if quick else perf_thumbs.PAGE_PHOTOS,
                size=(1600, 1200) if quick else perf_thumbs.PHOTO_SIZE),
            "backends": lambda: perf_backends.measure_backends(checkpoint, backends, work, repeats, batch, args.k,
                                                               results, quick),
        }
        for name in SECTIONS:
            if name not in only:
                continue
            log.info("perf: %s ...", name)
            begin = time.perf_counter()
            try:
                steps[name]()
            except Exception as exc:  # report the others; the exit status says something failed
                failed.append(name)
                results.pending[name] = f"FAILED: {type(exc).__name__}: {exc}"
                log.error("perf section %s failed:\n%s", name, traceback.format_exc())
            results.facts[f"section_seconds.{name}"] = round(time.perf_counter() - begin, 1)
    meta.update(load_average_end=load_average(), wall_seconds=round(time.time() - started, 1))
    checks = targets(sizes, library_size, pipeline)
    if "backends" in only:
        checks += perf_backends.targets(batch)
    for target in checks:
        figure = results.figures.get(target.key)
        target.value = figure.median if figure else None
    perf_backends.explain(checks, results)
    print()
    print(format_table(results))
    print()
    print("Targets:")
    print(format_targets(checks, results.figures))
    if results.pending:
        print()
        print("Pending / not measured:")
        for key, reason in results.pending.items():
            print(f"  {key}: {reason}")
    print()
    print(f"load average at start {meta['load_average_start']}, at end {meta['load_average_end']}; "
          f"{meta['wall_seconds']} s in all")
    if random_weights:
        print("random weights (timing only): no accuracy figure here means anything")
    if args.json_out:
        write_json(Path(args.json_out), meta, results, checks)
        print(f"wrote {args.json_out}")
    return 1 if failed else 0


def banner(meta: dict, name: str) -> str:
    """The run's header: model (and whether its weights are random), device, threads, load."""
    weights = "random weights (timing only)" if meta["random_weights"] else "checkpoint weights"
    gpu = f", GPU {meta['gpu']}" if meta["gpu"] else ", no GPU visible"
    return (f"clip-app perf: {meta['model']} ({name}), {weights}; device {meta['device']}{gpu}; "
            f"torch {meta['torch']} with {meta['torch_threads']} threads on {meta['cpu_count']} CPUs; "
            f"load average {meta['load_average_start']}")


def make_photos(folder: Path, batch: int, repeats: int, quick: bool) -> dict[str, list[Path]]:
    """The JPEG files: Flickr-sized (500x375), camera-sized (4000x3000; 1200x900 in --quick), one 640x480 for
    classify, and distinct 500x375 files for the library figures."""
    large = (1200, 900) if quick else (4000, 3000)
    return {
        "small": write_photos(folder / "small", 2 * batch, (500, 375), seed=1),
        "large": write_photos(folder / "large", batch, large, seed=2),
        "classify": write_photos(folder / "classify", 1, (640, 480), seed=3),
        "library": write_photos(folder / "library", repeats + 1 + batch, (500, 375), seed=4),
    }


def write_json(path: Path, meta: dict, results: Results, checks: list[Target]) -> None:
    """Everything of the run as JSON: meta, figures (with every value), targets, pending, facts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "figures": {k: f.as_dict() for k, f in results.figures.items()},
               "targets": [t.as_dict() for t in checks], "pending": results.pending, "facts": results.facts}
    path.write_text(json.dumps(payload, indent=2, default=str))
