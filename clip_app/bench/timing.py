"""Timed stages for benchmarks: accumulate wall-clock seconds per named stage."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

import torch


class StageTimer:
    """Accumulates seconds per stage; `with timer.stage("encode_images"): ...` (CUDA work is synchronised)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        sync_device()
        start = time.perf_counter()
        try:
            yield
        finally:
            sync_device()
            self.seconds[name] += time.perf_counter() - start

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds

    def as_dict(self) -> dict[str, float]:
        return dict(self.seconds)


def sync_device() -> None:
    """Wait for queued GPU work (timings end when the work ends); nothing on a CPU."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
