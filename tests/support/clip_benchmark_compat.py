"""CLIP_benchmark's own zero-shot classification code (package clip-benchmark 1.6.2, a dev dependency installed
with --no-deps), made usable on numpy >= 2.4 for the tests.

Its accuracy() ends in `float(tensor.cpu().numpy())` on a one-element 1-d array, which numpy 2.4 refuses ("only
0-dimensional arrays can be converted to Python scalars"). The workaround shadows the builtin `float` inside
that one module, for the duration of a call only, by a float that accepts one-element arrays; every line of
the library's code runs unchanged. Test-only: the product does not import clip_benchmark.
"""

from __future__ import annotations

import builtins
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import clip_benchmark.metrics.zeroshot_classification as zsc
import numpy as np
import torch


def _float(value: Any = 0.0) -> float:
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(())
    return builtins.float(value)


@contextmanager
def zeroshot_classification() -> Iterator[Any]:
    """The clip_benchmark.metrics.zeroshot_classification module, usable on numpy 2.4 inside the block."""
    zsc.float = _float  # module global: found before the builtin when the module's functions call float()
    try:
        yield zsc
    finally:
        del zsc.float


def clip_benchmark_accuracy(logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1, 5)) -> list[float]:
    """CLIP_benchmark's accuracy(): top-k accuracy fractions of logits [N, C] for targets [N]."""
    with zeroshot_classification() as module:
        return module.accuracy(logits, target, topk=tuple(topk))
