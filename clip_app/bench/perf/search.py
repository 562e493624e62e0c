"""Performance figures of search: top-k alone over synthetic unit features from 1,000 to 1,000,000 rows, text
encoding alone, and the whole text query (encode + top-k) against one text forward pass of the model."""

from __future__ import annotations

import logging
from typing import Callable, Iterator, Sequence

import torch

from ...encoders import ClipEncoder
from ...search import half_candidates, top_k
from .encode import text_forward, timed
from .setup import query_text, unit_features
from .stats import Results, counting

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
    """The figures of one library size n: top-k alone over float16 rows (as the library stores and searches them)
    and over float32 rows (before the float16 scan), the whole query and its ratio to a text forward pass."""
    rows32 = unit_features(n, encoder.dim, seed=n)
    rows16 = rows32.half()
    ids = torch.arange(1, n + 1, dtype=torch.int64)
    query = unit_features(1, encoder.dim, seed=n + 1)[0]
    for rows in (rows16, rows32):
        top_k(query, rows, ids, k)  # warm-up: first touch of the matrix
    count = fast_repeats(repeats, n)
    results.add(f"search.topk.{n}", f"top-{k} alone, {n:,} float16 rows (the library's search)", "s",
                [timed(lambda: top_k(query, rows16, ids, k)) for _ in range(count)])
    results.add(f"search.topk_float32.{n}", "  same over float32 rows (before the float16 scan)", "s",
                [timed(lambda: top_k(query, rows32, ids, k)) for _ in range(count)])

    def query_once() -> None:
        feature = encoder.encode_texts([query_text(next(counter))])[0]
        top_k(feature, rows16, ids, k)

    whole, ratios, in_run = [], [], []
    for _ in range(max(repeats, 5)):
        ref = timed(reference)
        inside: dict[str, float] = {}
        with counting(encoder, "_forward_text", inside):
            took = timed(query_once)
        whole.append(took)
        ratios.append(took / ref)
        in_run.append(took / inside["seconds"])
    results.add(f"search.query.{n}", f"text query (encode + top-{k}), {n:,} rows", "s", whole)
    results.add(f"search.query.{n}.ratio", "  / one bare 77-token text forward pass (paired runs)", "x", ratios)
    results.add(f"search.query.{n}.in_run", "  / its own (trimmed) text forward pass (same run)", "x", in_run)
    if last:
        _where_time_goes(query, rows16, rows32, k, repeats, results, n)


def _where_time_goes(query: torch.Tensor, rows16: torch.Tensor, rows32: torch.Tensor, k: int, repeats: int,
                     results: Results, n: int) -> None:
    """The parts of top-k at the largest size: the scans (memory bound), the selection, the exact re-scoring."""
    count = fast_repeats(repeats, n)
    coarse = rows16 @ query.half()
    candidates = half_candidates(query, rows16, k)
    results.add(f"search.parts.scan16.{n}", f"  of which the float16 scan rows @ query, {n:,} rows", "s",
                [timed(lambda: rows16 @ query.half()) for _ in range(count)])
    results.add(f"search.parts.select.{n}", f"  of which torch.topk(scores, {k}), {n:,} rows", "s",
                [timed(lambda: torch.topk(coarse, k, sorted=False)) for _ in range(count)])
    results.add(f"search.parts.rescore.{n}", f"  of which exact float32 scores of {len(candidates)} candidates", "s",
                [timed(lambda: rows16[candidates].float() @ query) for _ in range(count)])
    results.add(f"search.parts.scan32.{n}", f"  a float32 scan instead (one core), {n:,} rows", "s",
                [timed(lambda: rows32 @ query) for _ in range(count)])
    for name, rows in (("float16", rows16), ("float32", rows32)):
        results.facts[f"search.matrix_mb.{name}.{n}"] = round(rows.numel() * rows.element_size() / 2**20, 1)
    for part, rows in (("scan16", rows16), ("scan32", rows32)):
        median = results.figures[f"search.parts.{part}.{n}"].median
        results.facts[f"search.{part}_gb_per_s.{n}"] = round(rows.numel() * rows.element_size() / median / 1e9, 2)
    results.facts[f"search.candidates.{n}"] = len(candidates)


def _scaling_facts(sizes: Sequence[int], results: Results) -> None:
    """Milliseconds per 100,000 rows at each size (constant when top-k scales linearly)."""
    per = {}
    for n in sizes:
        figure = results.figures.get(f"search.topk.{n}")
        if figure is not None:
            per[n] = round(figure.median * 1000 * 100_000 / n, 2)
    results.facts["search.topk_ms_per_100k_rows"] = per
