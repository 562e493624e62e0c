"""Bidirectional retrieval metrics (pure): ranks, Recall@K and median rank from unit features.

Ranks are 1-based. Equal scores are ordered by the lower gallery index (a stable sort of the scores), the same rule
rank_gallery applies for the grids' top retrievals, so a rank never depends on the order torch returns ties in.
Everything is computed in row chunks so a 30,000 x 6,000 score matrix never has to be sorted whole.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

DEFAULT_KS = (1, 5, 10)
_CHUNK = 1024


def similarities(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of unit rows: queries [Q, D] x gallery [G, D] -> scores [Q, G] (float32)."""
    return queries.float() @ gallery.float().T


def _ranks_of(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Rank of column target[q] in row q of scores [Q, G], ties to the lower column: -> int64 [Q], 1-based."""
    columns = torch.arange(scores.shape[1])
    hit = scores.gather(1, target[:, None])
    ahead = (scores > hit) | ((scores == hit) & (columns[None, :] < target[:, None]))
    return ahead.sum(dim=1) + 1


def text_to_image_ranks(text_features: torch.Tensor, image_features: torch.Tensor,
                        caption_image: torch.Tensor) -> torch.Tensor:
    """Rank of each caption's own image among all images: texts [T, D], images [I, D], caption_image [T] -> [T]."""
    caption_image = torch.as_tensor(caption_image, dtype=torch.long)
    out = [_ranks_of(similarities(text_features[i:i + _CHUNK], image_features), caption_image[i:i + _CHUNK])
           for i in range(0, len(text_features), _CHUNK)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def image_to_text_ranks(image_features: torch.Tensor, text_features: torch.Tensor,
                        caption_image: torch.Tensor) -> torch.Tensor:
    """Rank of the best-placed caption of each image among all captions: images [I, D], texts [T, D] -> [I].

    Every caption of an image is a correct answer, so the rank is that of the first correct caption in the list.
    """
    caption_image = torch.as_tensor(caption_image, dtype=torch.long)
    n_images = len(image_features)
    has_caption = torch.bincount(caption_image, minlength=n_images) > 0
    if not bool(has_caption.all()):
        missing = torch.nonzero(~has_caption).flatten()[:5].tolist()
        raise ValueError(f"images without any caption cannot be ranked (image indices {missing})")
    out = []
    for start in range(0, n_images, _CHUNK):
        scores = similarities(image_features[start:start + _CHUNK], text_features)  # [B, T]
        rows = torch.arange(start, start + len(scores))
        positive = caption_image[None, :] == rows[:, None]  # [B, T]
        # the first correct caption in (score desc, index asc) order: the best score, then the lowest index
        best_score = scores.masked_fill(~positive, float("-inf")).max(dim=1).values
        best_index = torch.where(positive & (scores == best_score[:, None]), torch.arange(scores.shape[1]),
                                 scores.shape[1]).min(dim=1).values
        out.append(_ranks_of(scores, best_index))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def recall_at_k(ranks: torch.Tensor, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Fraction of queries whose first hit is within the top K: ranks [Q] -> {'R@K': value}."""
    ranks = torch.as_tensor(ranks)
    if len(ranks) == 0:
        return {f"R@{k}": float("nan") for k in ks}
    return {f"R@{k}": float((ranks <= k).double().mean()) for k in ks}


def median_rank(ranks: torch.Tensor) -> float:
    """Median of 1-based ranks [Q] (the mean of the two middle ranks for an even count)."""
    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    if len(ranks) == 0:
        return float("nan")
    return float(ranks.quantile(0.5))


def summarize(ranks: torch.Tensor, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Recall@K for each K and the median rank of ranks [Q]."""
    return {**recall_at_k(ranks, ks), "median_rank": median_rank(ranks)}


def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor, caption_image: torch.Tensor,
                      ks: Iterable[int] = DEFAULT_KS) -> dict[str, dict[str, float]]:
    """Both directions: images [I, D], texts [T, D], caption_image [T] -> {'text_to_image': .., 'image_to_text': ..}."""
    ks = tuple(ks)
    return {
        "text_to_image": summarize(text_to_image_ranks(text_features, image_features, caption_image), ks),
        "image_to_text": summarize(image_to_text_ranks(image_features, text_features, caption_image), ks),
    }


def rank_gallery(query: torch.Tensor, gallery: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One unit query [D] against gallery [G, D]: (gallery indices [G] best first, equal scores to the lower index
    as in the ranks above; scores [G] in gallery order)."""
    scores = similarities(query.reshape(1, -1), gallery)[0]
    return torch.sort(-scores, stable=True).indices, scores


def subset_captions(caption_image: Sequence[int] | torch.Tensor,
                    images: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions of a subset of images: -> (caption indices [T'], caption_image re-indexed into the subset [T'])."""
    caption_image = torch.as_tensor(caption_image, dtype=torch.long)
    images = torch.as_tensor(list(images), dtype=torch.long)
    size = max([int(caption_image.max()) + 1 if len(caption_image) else 0, int(images.max()) + 1 if len(images) else 0])
    position = torch.full((size,), -1, dtype=torch.long)
    position[images] = torch.arange(len(images))
    mapped = position[caption_image]
    keep = torch.nonzero(mapped >= 0).flatten()
    return keep, mapped[keep]
