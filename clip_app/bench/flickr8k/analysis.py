"""Flickr8k analyses (pure): recall against gallery size, recall by caption length, example selection."""

from __future__ import annotations

import logging
import random
import re
from typing import Iterable, Sequence

import torch

from .metrics import DEFAULT_KS, image_to_text_ranks, recall_at_k, subset_captions, summarize, text_to_image_ranks

log = logging.getLogger(__name__)

GALLERY_SIZES = (100, 250, 500, 1000)
#: word-count buckets (inclusive bounds; None = no upper bound)
LENGTH_BUCKETS: tuple[tuple[int, int | None], ...] = ((1, 6), (7, 9), (10, 12), (13, 15), (16, 19), (20, None))
DIRECTIONS = ("text_to_image", "image_to_text")
_WORD = re.compile(r"\w")


def word_count(caption: str) -> int:
    """Words of a caption: whitespace-separated tokens with a letter or digit (a lone '.' is not a word)."""
    return sum(1 for token in caption.split() if _WORD.search(token))


def bucket_label(bounds: tuple[int, int | None]) -> str:
    """'7-9' or '20+'."""
    low, high = bounds
    return f"{low}+" if high is None else (str(low) if low == high else f"{low}-{high}")


def recall_by_length(t2i_ranks: torch.Tensor, captions: Sequence[str],
                     buckets: Iterable[tuple[int, int | None]] = LENGTH_BUCKETS,
                     ks: Iterable[int] = DEFAULT_KS) -> list[dict]:
    """Text-to-image Recall@K per caption word-count bucket: ranks [T] + captions -> rows (empty buckets left out)."""
    lengths = torch.tensor([word_count(c) for c in captions])
    ranks = torch.as_tensor(t2i_ranks)
    rows = []
    for low, high in buckets:
        inside = (lengths >= low) & (lengths <= (high if high is not None else 1 << 30))
        if not bool(inside.any()):
            continue
        rows.append({"words": bucket_label((low, high)), "min_words": low, "max_words": high,
                     "n_captions": int(inside.sum()), **recall_at_k(ranks[inside], ks)})
    return rows


def _mean_std(values: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    keys = values[0].keys()
    stacked = {k: torch.tensor([v[k] for v in values], dtype=torch.float64) for k in keys}
    mean = {k: float(t.mean()) for k, t in stacked.items()}
    std = {k: float(t.std(unbiased=False)) for k, t in stacked.items()}
    return mean, std


def gallery_size_curve(image_features: torch.Tensor, text_features: torch.Tensor, caption_image: torch.Tensor,
                       sizes: Iterable[int] = GALLERY_SIZES, subsets: int = 5, seed: int = 0,
                       ks: Iterable[int] = DEFAULT_KS) -> list[dict]:
    """Recall@K and median rank on random image subsets of each size (with their captions), mean and std.

    images [I, D], texts [T, D], caption_image [T]. Sizes above I are skipped; a size equal to I is one subset.
    """
    ks = tuple(ks)
    caption_image = torch.as_tensor(caption_image, dtype=torch.long)
    n_images = len(image_features)
    rows = []
    for size in sorted(set(int(s) for s in sizes)):
        if size > n_images or size < 1:
            log.info("gallery size %d skipped: the split has %d images", size, n_images)
            continue
        generator = torch.Generator().manual_seed(seed * 1_000_003 + size)
        draws = 1 if size == n_images else max(1, subsets)
        per_direction: dict[str, list[dict[str, float]]] = {d: [] for d in DIRECTIONS}
        for _ in range(draws):
            chosen = torch.randperm(n_images, generator=generator)[:size].sort().values
            keep, mapped = subset_captions(caption_image, chosen)
            images, texts = image_features[chosen], text_features[keep]
            per_direction["text_to_image"].append(summarize(text_to_image_ranks(texts, images, mapped), ks))
            per_direction["image_to_text"].append(summarize(image_to_text_ranks(images, texts, mapped), ks))
        row: dict = {"size": size, "subsets": draws}
        for direction, values in per_direction.items():
            row[direction], row[f"{direction}_std"] = _mean_std(values)
        rows.append(row)
    return rows


def pick_examples(ranks: torch.Tensor, count: int = 3, seed: int = 0, top: int = 5) -> tuple[list[int], list[int]]:
    """Seeded picks of query indices: (successes: rank 1, failures: rank > top, else rank > 1)."""
    ranks = torch.as_tensor(ranks)
    rng = random.Random(seed)
    successes = torch.nonzero(ranks == 1).flatten().tolist()
    failures = torch.nonzero(ranks > top).flatten().tolist() or torch.nonzero(ranks > 1).flatten().tolist()
    pick = lambda pool: sorted(rng.sample(pool, min(count, len(pool))))  # noqa: E731
    return pick(successes), pick(failures)
