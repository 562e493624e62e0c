"""Performance figures of tags and search confidence at library scale (synthetic unit features, float16 as stored):
tagging N rows with a 20-label set (text encoding excluded), listing one tag, and what percentiles plus the
confidence rule add to a search (paired with top-k alone in the same run)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from ..classify import ClassifierCache
from ..label_sets import LabelSetStore
from ..search import ConfidenceRule, confidence, percentiles, scan, top_k
from ..tags import LibraryTags, compute
from .perf_encode import timed
from .perf_setup import unit_features
from .perf_stats import Results

log = logging.getLogger(__name__)

LABELS = 20
MODEL = "perf-synthetic"


class _Library:
    """The library as tagging sees it: (model, ids [N], float16 features [N, D])."""

    def __init__(self, ids: torch.Tensor, rows16: torch.Tensor) -> None:
        self.ids, self.rows16 = ids, rows16

    def tag_rows(self) -> tuple[str, torch.Tensor, torch.Tensor]:
        return MODEL, self.ids, self.rows16


class _Texts:
    """A text encoder giving fixed random unit features (the benchmark excludes text encoding)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return unit_features(len(texts), self.dim, seed=len(texts))


def measure_tags(dim: int, n: int, repeats: int, k: int, results: Results) -> None:
    """tags.compute.<N>, tags.tag_and_save.<N>, tags.list.<N>, search.confidence.<N>.ratio (+ parts)."""
    rows16 = unit_features(n, dim, seed=11).half()
    ids = torch.arange(1, n + 1, dtype=torch.int64)
    labels = [f"label {i}" for i in range(LABELS)]
    # columns near some rows, so that every label tags a few hundred images as a real set would
    classifier = torch.nn.functional.normalize(rows16[torch.arange(LABELS) * 97].float().T + 0.02 *
                                               unit_features(LABELS, dim, seed=5).T, dim=0)  # [D, C]
    with tempfile.TemporaryDirectory(prefix="clip-perf-tags-") as folder:
        store = LabelSetStore(Path(folder) / "label_sets.json")
        store.save("perf", labels)
        label_set = store.get_set("perf")
        count = max(repeats, 5)
        compute(label_set, 0.25, MODEL, classifier, ids, rows16)  # warm-up
        results.add(f"tags.compute.{n}", f"tag {n:,} float16 rows with a {LABELS}-label set (one matrix product; "
                    "text encoding excluded)", "s",
                    [timed(lambda: compute(label_set, 0.25, MODEL, classifier, ids, rows16)) for _ in range(count)])
        library = _Library(ids, rows16)
        texts = _Texts(dim)
        saved = []
        for _ in range(count):
            tags = LibraryTags(Path(folder) / f"tags-{len(saved)}", store, ClassifierCache())
            tags.classifiers.get(texts, labels, ("a photo of a {}.",))  # the text side, outside the timing
            saved.append(timed(lambda t=tags: t.tag("perf", library, texts)))
        results.add(f"tags.tag_and_save.{n}", "  the same through LibraryTags.tag, with the atomic write of the "
                    "tags file", "s", saved)
        listed = tags.current("perf", library, texts)
        counts = listed.counts()
        label = max(counts, key=lambda name: counts[name])
        results.facts[f"tags.list.{n}.count"] = counts[label]
        results.add(f"tags.list.{n}", f"list one tag ({counts[label]:,} images) of a {n:,}-row library, tags up "
                    "to date", "s", [timed(lambda: tags.current("perf", library, texts).ids_with(label).tolist())
                                     for _ in range(max(repeats, 10))])
    _measure_confidence(rows16, ids, dim, repeats, k, results, n)


def _measure_confidence(rows16: torch.Tensor, ids: torch.Tensor, dim: int, repeats: int, k: int, results: Results,
                        n: int) -> None:
    """A search with percentiles and the confidence rule against top-k alone, paired (same query, same run)."""
    neutral = unit_features(1, dim, seed=3)[0]
    rule = ConfidenceRule()

    def judged(query: torch.Tensor) -> None:
        scores, rows, every = scan(query, rows16, ids, k)
        every = every.float()  # as App._search does
        percentiles(every, rows)
        confidence(every, float(scores[0]), float(rows16[rows[0]].float() @ neutral), rule)

    plain, full, ratios = [], [], []
    for i in range(max(repeats, 10)):
        query = unit_features(1, dim, seed=1000 + i)[0]
        top_k(query, rows16, ids, k)  # warm
        a = timed(lambda q=query: top_k(q, rows16, ids, k))
        b = timed(lambda q=query: judged(q))
        plain.append(a)
        full.append(b)
        ratios.append(b / a)
    results.add(f"search.plain.{n}", f"top-{k} alone, {n:,} float16 rows (paired with the next)", "s", plain)
    results.add(f"search.confidence.{n}", "  + percentiles and the confidence rule from the same scan", "s", full)
    results.add(f"search.confidence.{n}.ratio", "  / top-k alone (paired runs)", "x", ratios)
