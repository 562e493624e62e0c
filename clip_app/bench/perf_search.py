"""Performance figures of search: top-k alone over synthetic unit features from 1,000 to 1,000,000 rows, text
encoding alone, and the whole text query (encode + top-k) against one text forward pass of the model."""

from __future__ import annotations

import logging
from typing import Callable, Iterator, Sequence

import torch

from ..model import ClipEncoder
from ..search import top_k
from .perf_encode import text_forward, timed
from .perf_setup import query_text, unit_features
from .perf_stats import Results

log = logging.getLogger(__name__)


def fast_repeats(repeats: int, n: int) -> int:
    """More repeats where one call is cheap (small matrices), the asked number for 1M rows."""
    return repeats if n >= 1_000_000 else max(repeats, 10)


def measure_search(encoder: ClipEncoder, sizes: Sequence[int], repeats: int, k: int, results: Results) -> None:
    """search.topk.<N>, search.query.<N> (+ .ratio), search.encode_text, and where the time goes at the largest N."""
    reference = text_forward(encoder)
    reference()
    counter = iter(range(10**9))
    encode_alone = []
    for _ in range(max(repeats, 5)):
        encode_alone.append(timed(lambda: encoder.encode_texts([query_text(next(counter))])))
    results.add("search.encode_text", "text encode of one new query (ClipEncoder.encode_texts)", "s", encode_alone)
    for n in sizes:
        _measure_size(encoder, n, repeats, k, results, reference, counter, last=n == max(sizes))
    _scaling_facts(sizes, results)


def _measure_size(encoder: ClipEncoder, n: int, repeats: int, k: int, results: Results,
                  reference: Callable[[], None], counter: Iterator[int], last: bool) -> None:
    """The figures of one library size n: top-k alone, the whole query and its ratio to a text forward pass."""
    features = unit_features(n, encoder.dim, seed=n)
    ids = torch.arange(1, n + 1, dtype=torch.int64)
    query = unit_features(1, encoder.dim, seed=n + 1)[0]
    top_k(query, features, ids, k)  # warm-up: first touch of the matrix
    alone = [timed(lambda: top_k(query, features, ids, k)) for _ in range(fast_repeats(repeats, n))]
    results.add(f"search.topk.{n}", f"top-{k} alone, {n:,} rows", "s", alone)

    def query_once() -> None:
        feature = encoder.encode_texts([query_text(next(counter))])[0]
        top_k(feature, features, ids, k)

    whole, ratios = [], []
    for _ in range(repeats):
        ref = timed(reference)
        took = timed(query_once)
        whole.append(took)
        ratios.append(took / ref)
    results.add(f"search.query.{n}", f"text query (encode + top-{k}), {n:,} rows", "s", whole)
    results.add(f"search.query.{n}.ratio", f"text query / one text forward pass, {n:,} rows", "x", ratios)
    if last:
        _where_time_goes(query, features, k, repeats, results, n)


def _where_time_goes(query: torch.Tensor, features: torch.Tensor, k: int, repeats: int, results: Results,
                     n: int) -> None:
    """The parts of top-k at the largest size: the matrix-vector product (memory bound) and the selection."""
    scores = features @ query
    results.add(f"search.parts.matvec.{n}", f"  of which scores = features @ query, {n:,} rows", "s",
                [timed(lambda: features @ query) for _ in range(fast_repeats(repeats, n))])
    results.add(f"search.parts.select.{n}", f"  of which torch.topk(scores, {k}), {n:,} rows", "s",
                [timed(lambda: torch.topk(scores, k)) for _ in range(fast_repeats(repeats, n))])
    half = features.half()
    results.add(f"search.parts.matvec_fp16.{n}", f"  scores from float16 rows (half the bytes), {n:,} rows", "s",
                [timed(lambda: half @ query.half()) for _ in range(fast_repeats(repeats, n))])
    results.facts[f"search.matrix_mb.{n}"] = round(features.numel() * features.element_size() / 2**20, 1)
    median = results.figures[f"search.parts.matvec.{n}"].median
    results.facts[f"search.matvec_gb_per_s.{n}"] = round(features.numel() * 4 / median / 1e9, 2)


def _scaling_facts(sizes: Sequence[int], results: Results) -> None:
    """Milliseconds per 100,000 rows at each size (constant when top-k scales linearly)."""
    per = {}
    for n in sizes:
        figure = results.figures.get(f"search.topk.{n}")
        if figure is not None:
            per[n] = round(figure.median * 1000 * 100_000 / n, 2)
    results.facts["search.topk_ms_per_100k_rows"] = per
