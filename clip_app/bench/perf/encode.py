"""Performance figures of the image side: the model's own forward passes (the reference), indexing throughput of
the real pipeline against them, and classify latency."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ...encoders import ClipEncoder
from ...images import decode_image, draft_size, read_bytes
from ..timing import sync_device
from .setup import QUERIES, label_set, make_app, open_library
from .stats import Results, counting

log = logging.getLogger(__name__)


# ---- the reference: the model's own forward passes ----------------------------------------------------------
def image_forward(encoder: ClipEncoder, batch: int) -> Callable[[], None]:
    """One forward pass of the bare image tower on random pixels [batch, 3, R, R] (no decode, no preprocess),
    through the encoder's own backend (PyTorch or ONNX Runtime)."""
    r = encoder.input_resolution
    pixels = torch.randn(batch, 3, r, r)

    def run() -> None:
        encoder.encode_pixels(pixels)
        sync_device()

    return run


def text_forward(encoder: ClipEncoder, text: str = QUERIES[0]) -> Callable[[], None]:
    """One forward pass of the bare text tower on one text tokenised by the model's own tokenizer, over its whole
    context (77 tokens for CLIP), through the encoder's own backend (PyTorch or ONNX Runtime)."""
    tokens = encoder.tokenize([text])

    def run() -> None:
        encoder.encode_tokens(tokens, trim=False)
        sync_device()

    return run


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of fn takes (CUDA work synchronised)."""
    sync_device()
    start = time.perf_counter()
    fn()
    sync_device()
    return time.perf_counter() - start


def measure_forward(encoder: ClipEncoder, batch: int, repeats: int, results: Results) -> None:
    """forward.image.1, forward.image.B (per batch and images/s) and forward.text.1."""
    one, many, text = image_forward(encoder, 1), image_forward(encoder, batch), text_forward(encoder)
    for fn in (one, many, text):
        fn()  # warm-up
    singles, batches, texts = [], [], []
    for _ in range(repeats):
        singles.append(timed(one))
        batches.append(timed(many))
        texts.append(timed(text))
    results.add("forward.image.1", "image forward pass, 1 image", "s", singles)
    results.add(f"forward.image.{batch}", f"image forward pass, batch of {batch}", "s", batches)
    results.add(f"forward.image.{batch}.rate", f"image forward pass, batch of {batch}", "img/s",
                [batch / s for s in batches])
    results.add("forward.text.1", "text forward pass, 1 text (77-token context)", "s", texts)


# ---- indexing -----------------------------------------------------------------------------------------------
def decode_encode(encoder: ClipEncoder, paths: Sequence[Path], batch: int, min_side: int | None) -> torch.Tensor:
    """The encoding path without the library: read, decode, preprocess, encode, batch by batch -> [N, D]."""
    rows = []
    for start in range(0, len(paths), batch):
        images = [decode_image(*read_bytes(p), min_side=min_side) for p in paths[start:start + batch]]
        rows.append(encoder.encode_images(images, batch_size=batch))
    return torch.cat(rows)


def measure_indexing(encoder: ClipEncoder, photos: dict[str, list[Path]], batch: int, repeats: int,
                     results: Results, workdir: Path) -> None:
    """index.<set>.*: images/s of each pipeline and its ratio to the bare forward pass over as many images.

    The files go in chunks of `batch`; for each chunk the bare forward pass is timed right before the pipelines
    (ratio: pipeline speed / bare forward speed, runs a few seconds apart). The share is the time the pipeline
    spends in its own forward passes (encode_pixels) over its whole time, F / (F + overhead): the same ratio
    measured inside one run, so a busy machine moves it much less. The library pipeline adds chunk after chunk to
    a fresh library (one add call, hence one save, per chunk).
    """
    min_side = encoder.decode_min_side
    forwards: dict[int, Callable[[], None]] = {}
    for name, paths in photos.items():
        chunks = [paths[i:i + batch] for i in range(0, len(paths), batch)]
        variants: dict[str, Callable[[list[Path], Any], None]] = {
            "decode_encode": lambda chunk, library: decode_encode(encoder, chunk, batch, None),
        }
        if min_side and draft_size(_image_size(paths[0]), min_side) is not None:  # else the same as above
            variants["decode_encode_draft"] = lambda chunk, library: decode_encode(encoder, chunk, batch, min_side)
        variants["library_add"] = lambda chunk, library: _add_all(library, chunk)
        seconds: dict[str, list[float]] = {v: [] for v in variants}
        ratios: dict[str, list[float]] = {v: [] for v in variants}
        shares: dict[str, list[float]] = {v: [] for v in variants}
        warm = _fresh_library(workdir / f"index-{name}-warm-up", encoder, batch)
        for run in variants.values():
            run(chunks[0], warm)  # warm-up, and a check that each pipeline works
        for r in range(repeats):
            library = _fresh_library(workdir / f"index-{name}-{r}", encoder, batch)
            for chunk in chunks:
                forward = forwards.setdefault(len(chunk), image_forward(encoder, len(chunk)))
                reference = timed(forward)
                for variant, run in variants.items():
                    inside: dict[str, float] = {}
                    with counting(encoder, "encode_pixels", inside):
                        took = timed(lambda run=run, chunk=chunk, library=library: run(chunk, library))
                    seconds[variant].append(len(chunk) / took)
                    ratios[variant].append(reference / took)
                    shares[variant].append(inside["seconds"] / took)
        size = "x".join(str(v) for v in _image_size(paths[0]))
        for variant in variants:
            what = {"decode_encode": "files -> decode -> preprocess -> encode",
                    "decode_encode_draft": f"same, JPEG decoded at reduced scale (shorter side >= {min_side})",
                    "library_add": "FeatureLibrary.add (hash, decode, encode, store, save)"}[variant]
            results.add(f"index.{name}.{variant}.rate", f"indexing {size} JPEGs: {what}", "img/s", seconds[variant])
            results.add(f"index.{name}.{variant}.ratio", "  speed / bare forward pass speed (paired runs)", "x",
                        ratios[variant])
            results.add(f"index.{name}.{variant}.share", "  the forward passes' share of its own time", "x",
                        shares[variant])
        results.facts[f"index.{name}.file_bytes"] = paths[0].stat().st_size
        results.facts[f"index.{name}.images"] = len(paths)


def _fresh_library(folder: Path, encoder: ClipEncoder, batch: int) -> Any:
    shutil.rmtree(folder, ignore_errors=True)
    return open_library(folder, encoder, batch)


def _add_all(library: Any, paths: list[Path]) -> None:
    report = library.add(paths)
    if len(report.added) != len(paths):
        raise RuntimeError(f"library add: {report.summary()}")


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


# ---- classify -----------------------------------------------------------------------------------------------
def measure_classify(encoder: ClipEncoder, photo: Path, repeats: int, results: Results, workdir: Path,
                     batch: int) -> None:
    """classify.*: one 640x480 JPEG against a cached label set (ratio to one image forward pass), and the first
    call with a new label set (single template and the 80-template ensemble)."""
    data = photo.read_bytes()
    forward = image_forward(encoder, 1)
    app = make_app(workdir / "classify-app", encoder, batch)
    path = "App.classify(save=False)"

    def classify(labels: Sequence[str], ensemble: bool) -> object:
        return app.classify(data, list(labels), "ensemble" if ensemble else "single", save=False)

    cached = label_set(0)
    classify(cached, True)  # builds and caches the classifier: every timed call below is a cache hit
    forward()
    latencies, ratios, in_run = [], [], []
    for _ in range(max(repeats, 5)):
        reference = timed(forward)
        inside: dict[str, float] = {}
        with counting(encoder, "encode_pixels", inside):
            took = timed(lambda: classify(cached, True))
        latencies.append(took)
        ratios.append(took / reference)
        in_run.append(took / inside["seconds"])
    results.add("classify.cached", f"classify 640x480 JPEG, cached 10-label set: {path}", "s", latencies)
    results.add("classify.cached.ratio", "  / one bare image forward pass (paired runs)", "x", ratios)
    results.add("classify.cached.in_run", "  / its own image forward pass (same run)", "x", in_run)
    first_single = [timed(lambda r=r: classify(label_set(1000 + r), False)) for r in range(repeats)]
    results.add("classify.first.single", "classify, first call, new 10 labels x 1 template", "s", first_single)
    first_ensemble = [timed(lambda r=r: classify(label_set(2000 + r), True)) for r in range(max(1, repeats - 1))]
    results.add("classify.first.ensemble", "classify, first call, new 10 labels x 80 templates", "s",
                first_ensemble)
    results.facts["classify.file_bytes"] = len(data)
