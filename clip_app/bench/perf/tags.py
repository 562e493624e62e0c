"""Performance figures of tags and search confidence at library scale (synthetic unit features, float16 as stored):
tagging N rows with a 20-label set (text encoding excluded), listing one tag, and what percentiles plus the
confidence rule add to a search (paired with top-k alone in the same run)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from ...classify import ClassifierCache
from ...encoders import ClipEncoder
from ...label_sets import LabelSetStore
from ...library.tags import LibraryTags, compute
from ...search import ConfidenceRule, confidence, percentiles, scan_rows, top_k
from .encode import timed
from .setup import synthetic_state, unit_features
from .stats import Results

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
    """A text encoder answering with the benchmark's label columns [D, C] (text encoding is excluded)."""

    def __init__(self, classifier: torch.Tensor) -> None:
        self.columns = classifier.T.contiguous()  # [C, D]

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.columns[:len(texts)]


def measure_tags(encoder: ClipEncoder, n: int, repeats: int, k: int, results: Results) -> None:
    """tags.compute.<N>, tags.tag_and_save.<N>, tags.list.<N>, search.confidence.<N>.ratio (+ parts)."""
    dim = encoder.dim
    rows16 = unit_features(n, dim, seed=11).half()
    ids = torch.arange(1, n + 1, dtype=torch.int64)
    labels = [f"label {i}" for i in range(LABELS)]
    # columns near some rows, so that every label tags a few hundred images as a real set would
    near = rows16[torch.arange(LABELS) * 97].float()  # [C, D]
    classifier = torch.nn.functional.normalize(near.T + 0.02 * unit_features(LABELS, dim, seed=5).T, dim=0)
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
        texts = _Texts(classifier)
        saved = []
        for _ in range(count):
            tags = LibraryTags(Path(folder) / f"tags-{len(saved)}", store, ClassifierCache())
            tags.classifiers.get(texts, labels, ("a photo of a {}.",))  # the text side, outside the timing
            saved.append(timed(lambda t=tags: t.tag("perf", library, texts)))
        results.add(f"tags.tag_and_save.{n}", "  the same through LibraryTags.tag, with the atomic write of the "
                    "tags file", "s", saved)
        # one label given a threshold that tags a tenth of the library, as a common tag would
        cosines = tags.current("perf", library, texts).cosines[:, 0]
        store.update("perf", thresholds={labels[0]: float(torch.quantile(cosines[::10], 0.9))})
        real = _real_library(Path(folder), encoder, n)
        real_tags = LibraryTags(Path(folder) / "real.tags", store, tags.classifiers)
        count = len(real_tags.current("perf", real, texts).ids_with(labels[0]))

        def list_tag() -> tuple[list[int], list[str]]:
            ids_now = real_tags.current("perf", real, texts).ids_with(labels[0])
            return ids_now.tolist(), real.files_of(ids_now)

        results.facts[f"tags.list.{n}.count"] = count
        results.add(f"tags.list.{n}", f"list one tag ({count:,} images: IDs and files) of a {n:,}-row library, "
                    "tags brought up to date", "s", [timed(list_tag) for _ in range(max(repeats, 10))])
        results.add(f"tags.list_entries.{n}", "  the same as full entries (as `list --tag` prints them)", "s",
                    [timed(lambda: real.entries(real_tags.current("perf", real, texts).ids_with(labels[0])))
                     for _ in range(repeats)])
    _measure_confidence(rows16, ids, encoder.dim, repeats, k, results, n)


def _real_library(folder: Path, encoder: ClipEncoder, n: int) -> Any:
    """A FeatureLibrary of n synthetic rows (the same rows as the tagging figures), opened as the app opens it."""
    from ...library import FeatureLibrary
    from ...library.store import save_library

    path = folder / "library" / "features_library.pth"
    (folder / "library" / "gallery").mkdir(parents=True)
    state = synthetic_state(encoder.identity, encoder.name, unit_features(n, encoder.dim, seed=11))
    save_library(state, path, None)
    return FeatureLibrary(path.parent / "gallery", path, encoder)


def _measure_confidence(rows16: torch.Tensor, ids: torch.Tensor, dim: int, repeats: int, k: int, results: Results,
                        n: int) -> None:
    """A search with percentiles and the confidence rule against top-k alone, paired (same query, same run)."""
    neutral = unit_features(1, dim, seed=3)[0]
    rule = ConfidenceRule()

    def judged(query: torch.Tensor) -> None:
        found = scan_rows(query, rows16, ids, k)  # as App._search does
        percentiles(found)
        confidence(found.every, float(found.scores[0]), float(rows16[found.rows[0]].float() @ neutral), rule)

    plain, full, ratios = [], [], []
    for i in range(max(repeats, 20)):
        query = unit_features(1, dim, seed=1000 + i)[0]
        top_k(query, rows16, ids, k)  # warm
        if i % 2:  # alternate the order, so neither side always runs second
            b = timed(lambda q=query: judged(q))
            a = timed(lambda q=query: top_k(q, rows16, ids, k))
        else:
            a = timed(lambda q=query: top_k(q, rows16, ids, k))
            b = timed(lambda q=query: judged(q))
        plain.append(a)
        full.append(b)
        ratios.append(b / a)
    results.add(f"search.plain.{n}", f"top-{k} alone, {n:,} float16 rows (paired with the next)", "s", plain)
    results.add(f"search.confidence.{n}", "  + percentiles and the confidence rule from the same scan", "s", full)
    results.add(f"search.confidence.{n}.ratio", "  / top-k alone (paired runs)", "x", ratios)
