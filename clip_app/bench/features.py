"""Batched image encoding from files (DataLoader with workers, timed stages) and an on-disk feature cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..encoders import ClipEncoder
from ..files import replace_atomically
from ..images import ImageError, open_image
from .timing import StageTimer

log = logging.getLogger(__name__)


#: most DataLoader workers by default: more seldom speeds up decoding 224 px crops and costs memory per process
MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """The --workers default of every benchmark: the CPU count, at most MAX_DEFAULT_WORKERS."""
    return max(0, min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1))


class ImageFiles(Dataset):
    """Image files -> preprocessed pixel tensors [3, H, W], through clip_app.images (EXIF, alpha, ...)."""

    def __init__(self, paths: Sequence[Path], preprocess: Callable) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor | _Unreadable:
        try:
            return self.preprocess(open_image(self.paths[index]))
        except ImageError as exc:  # re-raised by the main process with its type and message intact
            return _Unreadable(exc.name, exc.reason)


class _Unreadable(NamedTuple):
    name: str
    reason: str


def _collate(items: list) -> torch.Tensor | _Unreadable:
    """Stack pixel tensors into [B, 3, H, W], or pass on the first unreadable image of the batch."""
    for item in items:
        if isinstance(item, _Unreadable):
            return item
    return torch.stack(items)


def encode_image_files(encoder: ClipEncoder, paths: Sequence[Path], *, batch_size: int = 64, workers: int = 2,
                       timer: StageTimer | None = None, desc: str = "encoding images",
                       progress: bool = True) -> torch.Tensor:
    """Encode image files in batches: float32 unit rows [N, D] in file order.

    Time waiting for the loader goes to stage 'data_loading', the forward passes to 'image_encoding'.
    An unreadable file raises ImageError naming it, also when it was read in a worker process.
    """
    timer = timer or StageTimer()
    if not paths:
        return torch.empty(0, encoder.dim)
    loader = DataLoader(ImageFiles(paths, encoder.preprocess), batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate, pin_memory=encoder.device.startswith("cuda"), persistent_workers=False)
    rows: list[torch.Tensor] = []
    iterator = iter(loader)
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        while True:
            start = time.perf_counter()
            try:
                pixels = next(iterator)
            except StopIteration:
                break
            timer.add("data_loading", time.perf_counter() - start)
            if isinstance(pixels, _Unreadable):
                raise ImageError(pixels.name, pixels.reason)
            with timer.stage("image_encoding"):
                rows.append(encoder.encode_pixels(pixels))
            bar.update(len(pixels))
    return torch.cat(rows)


def cache_key(model_identity: str, paths: Sequence[Path], extra: str = "") -> str:
    """A key for features of these files under this model: changes when any file, its size or mtime changes."""
    digest = hashlib.sha256()
    digest.update(model_identity.encode())
    digest.update(extra.encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{Path(path).resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def text_cache_key(model_identity: str, texts: Sequence[str], extra: str = "") -> str:
    """A key for features of these exact strings (in this order) under this model."""
    digest = hashlib.sha256()
    digest.update(f"{model_identity}\0{extra}\0{len(texts)}\n".encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()[:24]


class FeatureCache:
    """Feature tensors on disk under `folder`, one .pt file per key, loaded with weights_only=True."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, name: str, key: str) -> Path:
        return self.folder / f"{name}-{key}.pt"

    def load(self, name: str, key: str) -> torch.Tensor | None:
        entry = self.load_entry(name, key)
        return None if entry is None else entry[0]

    def load_entry(self, name: str, key: str) -> tuple[torch.Tensor, dict] | None:
        """(features, meta dict saved with them), or None when absent or unreadable."""
        path = self.path(name, key)
        if not path.exists():
            return None
        try:
            stored = torch.load(path, weights_only=True, map_location="cpu")
            return stored["features"], json.loads(stored.get("meta") or "{}")
        except Exception as exc:  # a damaged cache entry is recomputed, never trusted
            log.warning("ignoring unreadable feature cache %s (%s)", path, exc)
            return None

    def save(self, name: str, key: str, features: torch.Tensor, meta: dict | None = None) -> Path:
        """Store features [N, D] (+ meta) atomically: a temp file of this call only, fsync'd, then renamed.

        Runs sharing the folder never write into each other's temp file; the last rename wins, and a failed
        save leaves no temp file behind."""
        payload = {"features": features.contiguous(), "meta": json.dumps(meta or {})}
        return replace_atomically(self.path(name, key), lambda handle: torch.save(payload, handle))


def image_features_key(encoder: ClipEncoder, paths: Sequence[Path]) -> str:
    """The cache key of this model's image features of these files: model identity, precision (dtype) and every
    file (path, size, mtime), so fp16 features of a GPU run are never reused by an fp32 run, nor the reverse."""
    return cache_key(encoder.identity, paths, extra=f"images\0{precision_tag(encoder)}")


def text_features_key(encoder: ClipEncoder, texts: Sequence[str], purpose: str = "") -> str:
    """The cache key of features computed from these exact strings (in order) by this model at its precision;
    `purpose` tells apart different things computed from the same strings (a caption prefix, prompt templates)."""
    return text_cache_key(encoder.identity, texts, extra=f"texts\0{precision_tag(encoder)}\0{purpose}")


def precision_tag(encoder: ClipEncoder) -> str:
    """What a feature cache key needs of the numerics: the dtype (fp16 on a GPU, fp32), plus 'int8' for ONNX
    Runtime's quantised towers (fp32 ONNX Runtime gives PyTorch's fp32 features, so they share the cache)."""
    int8 = getattr(encoder, "precision", "") == "int8"
    return f"{encoder.dtype}" + ("\0onnx-int8" if int8 else "")


class CachedFeatures(NamedTuple):
    """Image features [N, D], the seconds of the run that encoded them, and whether they came from the cache."""

    features: torch.Tensor
    seconds: dict[str, float]  # 'data_loading' and 'image_encoding'
    cached: bool


IMAGE_STAGES = ("data_loading", "image_encoding")


def cached_image_features(encoder: ClipEncoder, paths: Sequence[Path], cache: FeatureCache | None, *,
                          label: str = "images", batch_size: int = 64, workers: int = 2,
                          timer: StageTimer | None = None, desc: str = "encoding images", progress: bool = True,
                          meta: dict | None = None) -> CachedFeatures:
    """This model's unit image features [N, D] of these files: read from the cache (key: image_features_key), or
    encoded with encode_image_files and saved under `label` (with `meta`). No cache: always encoded, never saved.

    Only an encoding run adds its 'data_loading' / 'image_encoding' seconds to `timer`; a cache hit returns the
    seconds stored by the run that encoded the features."""
    key = image_features_key(encoder, paths)
    if cache is not None:
        entry = cache.load_entry(label, key)
        if entry is not None and tuple(entry[0].shape) == (len(paths), encoder.dim):
            log.info("image features of %d files read from %s", len(paths), cache.path(label, key))
            return CachedFeatures(entry[0].float(), {k: float(entry[1].get(k, 0.0)) for k in IMAGE_STAGES}, True)
    stages = StageTimer()
    features = encode_image_files(encoder, paths, batch_size=batch_size, workers=workers, timer=stages, desc=desc,
                                  progress=progress)
    seconds = {k: stages.seconds.get(k, 0.0) for k in IMAGE_STAGES}
    if timer is not None:
        for stage, value in seconds.items():
            timer.add(stage, value)
    if cache is not None:
        cache.save(label, key, features, {**seconds, "model": encoder.identity, "dtype": str(encoder.dtype),
                                          "n_images": len(paths), "batch_size": batch_size, "workers": workers,
                                          "device": str(encoder.device), **(meta or {})})
    return CachedFeatures(features, seconds, False)
