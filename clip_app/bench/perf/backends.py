"""Backend comparison in one run: PyTorch against ONNX Runtime (and its int8 towers when asked) on the same
checkpoint, CPU. Each figure is measured for every backend inside the same repeat (torch, onnx, torch, onnx ...),
so a busy machine slows both alike; the ratios pair those runs.

Keys: backends.<name>.<figure> with <name> torch, onnx or onnx_int8, and backends.<name>.<figure>.ratio
(/ torch). Figures: forward.image.1 and forward.image.B (seconds per image through encode_pixels), text_query
(encode a new query + top-k over the library rows), index_add (FeatureLibrary.add of the JPEGs, images/s;
.vs_forward: over the images/s of the same backend's forward pass at batch B), classify (App.classify of one
640x480 JPEG against a cached label set), cold_start (python app.py until its first /classify answer, with the
export cached), and export (seconds, once per model: from the cache manifest).
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from ...encoders import ClipEncoder
from ...encoders.onnx_runtime import default_threads
from ...search import top_k
from . import app as perf_app
from .ceiling import measure_ceiling
from .encode import timed
from .setup import label_set, make_app, open_library, query_text, unit_features, write_photos
from .stats import Results, Target, counting

log = logging.getLogger(__name__)

SPECS = {"torch": ("torch", "fp32"), "onnx": ("onnx", "fp32"), "int8": ("onnx", "int8")}
QUERY_ROWS = 100_000
INDEX_IMAGES = 128


def parse_backends(text: str) -> list[str]:
    """'torch,onnx,int8' -> the names to compare (torch always first: every ratio is against it)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        raise ValueError(f"--backends: unknown {', '.join(unknown)}; choose from {', '.join(SPECS)}")
    return ["torch"] + [n for n in dict.fromkeys(names) if n != "torch"]


def key_of(name: str) -> str:
    """The JSON key of a backend: torch, onnx, onnx_int8."""
    return "onnx_int8" if name == "int8" else name


def measure_backends(checkpoint: Path, names: Sequence[str], workdir: Path, repeats: int, batch: int, k: int,
                     results: Results, quick: bool = False) -> None:
    """Every backends.* figure for the named backends (see the module docstring)."""
    model_dir = workdir / "models"
    encoders: dict[str, ClipEncoder] = {}
    for name in names:
        backend, precision = SPECS[name]
        started = time.perf_counter()
        encoder = ClipEncoder(str(checkpoint), device="cpu", backend=backend, precision=precision,
                              download_root=model_dir, batch_size=batch)
        if encoder.backend != backend:
            raise RuntimeError(f"backend {name}: ONNX Runtime could not be used (see the log); nothing to compare")
        encoders[name] = encoder
        results.facts[f"backends.{key_of(name)}.load_seconds"] = round(time.perf_counter() - started, 2)
        results.facts[f"backends.{key_of(name)}.engine"] = encoder.backend_name
        if backend == "onnx":
            manifest = encoder._onnx.exported.manifest
            results.add(f"backends.{key_of(name)}.export", f"{name}: one-time export + verification (manifest)",
                        "s", [manifest["export_seconds"][precision]])
            results.facts[f"backends.{key_of(name)}.probe_cosine"] = manifest["cosine"][precision]
    pixels = {n: torch.randn(n, 3, encoders["torch"].input_resolution, encoders["torch"].input_resolution)
              for n in (1, batch)}
    forward = {f"forward.image.{n}": (lambda e, n=n: e.encode_pixels(pixels[n]), n) for n in (1, batch)}
    per_image: dict[str, dict[str, list[float]]] = {key: {name: [] for name in names} for key in forward}
    for _ in range(repeats):
        for key, (run, n) in forward.items():
            for name in names:
                run(encoders[name])  # warm-up of this shape
                per_image[key][name].append(timed(lambda run=run, e=encoders[name]: run(e)) / n)
    for key, values in per_image.items():
        _add(results, names, key, f"{key.split('.')[-1]} image(s), per image (encode_pixels)", "s", values)
    measure_ceiling(encoders["torch"].model, encoders["torch"].input_resolution, names, batch,
                    per_image[f"forward.image.{batch}"], default_threads(), results)
    _text_query(encoders, names, repeats, k, results)
    _index_add(encoders, names, workdir, repeats, batch, results, per_image[f"forward.image.{batch}"], quick)
    photo = write_photos(workdir / "photos" / "backends-classify", 1, (640, 480), seed=3)[0]
    _classify(encoders, names, photo, repeats, workdir, batch, results)
    _cold_start(checkpoint, names, photo, model_dir, 1 if quick else repeats, results, workdir)


def _add(results: Results, names: Sequence[str], key: str, label: str, unit: str,
         values: dict[str, list[float]], higher_is_better: bool = False) -> None:
    """backends.<name>.<key> for each backend, and .ratio against torch (paired by repeat)."""
    for name in names:
        results.add(f"backends.{key_of(name)}.{key}", f"{name}: {label}", unit, values[name])
        if name != "torch":
            ratios = [a / b for a, b in zip(values[name], values["torch"])]
            what = "speed-up over torch (paired runs)" if higher_is_better else "/ torch (paired runs)"
            results.add(f"backends.{key_of(name)}.{key}.ratio", f"  {name} {what}", "x", ratios)


def _text_query(encoders: dict[str, ClipEncoder], names: Sequence[str], repeats: int, k: int,
                results: Results) -> None:
    dim = encoders["torch"].dim
    rows = unit_features(QUERY_ROWS, dim, seed=7).half()
    ids = torch.arange(1, QUERY_ROWS + 1)
    counter = itertools.count()
    seconds: dict[str, list[float]] = {name: [] for name in names}

    def query(encoder: ClipEncoder) -> None:
        top_k(encoder.encode_texts([query_text(next(counter))])[0], rows, ids, k)

    for name in names:
        query(encoders[name])  # warm-up
    for _ in range(max(repeats, 5)):
        for name in names:
            seconds[name].append(timed(lambda e=encoders[name]: query(e)))
    _add(results, names, "text_query", f"text query: encode a new query + top-{k} at {QUERY_ROWS:,} rows", "s",
         seconds)


def _index_add(encoders: dict[str, ClipEncoder], names: Sequence[str], workdir: Path, repeats: int, batch: int,
               results: Results, forward_per_image: dict[str, list[float]], quick: bool) -> None:
    count = batch * 2 if quick else INDEX_IMAGES
    photos = write_photos(workdir / "photos" / "backends-index", count, (500, 375), seed=11)
    rates: dict[str, list[float]] = {name: [] for name in names}
    shares: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names:
            library = open_library(_fresh(workdir / f"backends-index-{name}-{r}"), encoders[name],
                                                batch)
            inside: dict[str, float] = {}
            with counting(encoders[name], "encode_pixels", inside):
                took = timed(lambda library=library: library.add(photos))
            if len(library) != count:
                raise RuntimeError(f"index add on {name}: {len(library)} of {count} images added")
            rates[name].append(count / took)
            shares[name].append(inside["seconds"] / took)
    _add(results, names, "index_add", f"index add of {count} JPEGs 500x375 (FeatureLibrary.add)", "img/s", rates,
         higher_is_better=True)
    for name in names:
        forward_rate = 1.0 / (sum(forward_per_image[name]) / len(forward_per_image[name]))
        results.add(f"backends.{key_of(name)}.index_add.vs_forward",
                    f"  {name}: index add images/s / its forward pass's images/s at batch {batch}", "x",
                    [rate / forward_rate for rate in rates[name]])
        results.add(f"backends.{key_of(name)}.index_add.share", f"  {name}: forward passes' share of the add's time",
                    "x", shares[name])


def _fresh(folder: Path) -> Path:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    return folder


def _classify(encoders: dict[str, ClipEncoder], names: Sequence[str], photo: Path, repeats: int, workdir: Path,
              batch: int, results: Results) -> None:
    data = photo.read_bytes()
    labels = label_set(0)
    apps = {name: make_app(_fresh(workdir / f"backends-classify-{name}"), encoders[name], batch)
            for name in names}
    calls: dict[str, Callable[[], object]] = {
        name: (lambda app=app: app.classify(data, list(labels), "single", save=False)) for name, app in apps.items()}
    for call in calls.values():
        call()  # builds and caches the classifier
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(max(repeats, 5)):
        for name in names:
            seconds[name].append(timed(calls[name]))
    _add(results, names, "classify", "classify a 640x480 JPEG, cached 10-label set (App.classify)", "s", seconds)


def _cold_start(checkpoint: Path, names: Sequence[str], photo: Path, model_dir: Path, repeats: int,
                results: Results, workdir: Path) -> None:
    if perf_app.app_script() is None:
        results.pending["backends.cold_start"] = "app.py with the App is not in this build"
        return
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names:
            backend, precision = SPECS[name]
            marks = perf_app.cold_start(checkpoint, photo, workdir / f"backends-cold-{name}-{r}",
                                        extra_args=["--backend", backend, "--precision", precision, "--model-dir",
                                                    str(model_dir)])
            seconds[name].append(marks["first_answer"])
    for name in names:
        results.add(f"backends.{key_of(name)}.cold_start", f"{name}: app cold start to the first /classify "
                    "answer (export cached)", "s", seconds[name])
        if name != "torch":
            results.add(f"backends.{key_of(name)}.cold_start.extra", f"  {name} - torch (paired runs)", "s",
                        [a - b for a, b in zip(seconds[name], seconds["torch"])])


def explain(checks: Sequence[Target], results: Results) -> None:
    """Note on the forward and index-add targets what this CPU's fp32 ceiling allows (see ceiling.py)."""
    floor = results.figures.get("backends.ceiling.best_ratio")
    if floor is None:
        return
    best = floor.median
    for target in checks:
        if target.key.startswith("backends.onnx.forward.image.") and best > target.limit:
            target.note = (f"out of reach in fp32 here: at this CPU's measured fp32 peak the forward pass would be "
                           f"{best:.2f}x torch")
        elif target.key == "backends.onnx.index_add.ratio" and 1 / best < target.limit:
            target.note = f"out of reach in fp32 here: the fp32 peak allows at most {1 / best:.2f}x"


def targets(batch: int) -> list[Target]:
    """The ONNX Runtime issue's targets (random-weight ViT-B/32 on a CPU), tied to this run's keys."""
    return [
        Target(f"onnx image forward per image at batch {batch} / torch", f"backends.onnx.forward.image.{batch}.ratio",
               "<=", 0.55),
        Target(f"onnx text query (encode + top-k at {QUERY_ROWS:,} rows) / torch", "backends.onnx.text_query.ratio",
               "<=", 0.6),
        Target("onnx index add images/s / torch", "backends.onnx.index_add.ratio", ">=", 1.6),
        Target("onnx index add images/s / onnx forward images/s", "backends.onnx.index_add.vs_forward", ">=", 0.75),
        Target("onnx classify (cached label set) / torch", "backends.onnx.classify.ratio", "<=", 0.6),
        Target("onnx app cold start (export cached) - torch, seconds", "backends.onnx.cold_start.extra", "<=", 2.0),
    ]
