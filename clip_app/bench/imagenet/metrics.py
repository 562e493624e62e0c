"""Classification metrics (pure): top-k predictions and accuracy, mean per-class recall.

Conventions follow CLIP_benchmark's zero-shot classification code, which the tests check them against:
top-k counts a hit when the true class is among the k highest scores; mean per-class recall averages the
recall of every class present in the labels (sklearn's balanced accuracy).
"""

from __future__ import annotations

from typing import Sequence

import torch


def topk_predictions(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k best classes per row, best first: [N, C] -> [N, min(k, C)]."""
    k = min(int(k), scores.shape[1])
    return torch.topk(scores.float(), k, dim=1, largest=True, sorted=True).indices


def topk_hits(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Whether each row's true class is among its k best scores: [N, C], [N] -> bool [N]."""
    _check(scores, labels)
    return (topk_predictions(scores, k) == labels.view(-1, 1)).any(dim=1)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy as a fraction in [0, 1] for each k: [N, C], [N] -> {k: accuracy}."""
    _check(scores, labels)
    if len(labels) == 0:
        return {int(k): float("nan") for k in ks}
    best = topk_predictions(scores, max(ks))
    hits = best == labels.view(-1, 1)
    return {int(k): int(hits[:, :k].any(dim=1).sum()) / len(labels) for k in ks}


def per_class_recall(predictions: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    """Recall of every class present in the labels: predicted [N], true [N] -> {class: recall}."""
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ")
    recalls: dict[int, float] = {}
    for cls in torch.unique(labels).tolist():
        mask = labels == cls
        recalls[int(cls)] = int((predictions[mask] == cls).sum()) / int(mask.sum())
    return recalls


def mean_per_class_recall(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the classes present in the labels of their recall (balanced accuracy): [N], [N] -> float."""
    recalls = per_class_recall(predictions, labels)
    return sum(recalls.values()) / len(recalls) if recalls else float("nan")


def classification_metrics(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """top1, top5 and mean_per_class (fractions) of scores [N, C] against true classes [N]."""
    accuracy = topk_accuracy(scores, labels, (1, 5))
    predicted = scores.argmax(dim=1) if len(labels) else labels
    return {"top1": accuracy[1], "top5": accuracy[5], "mean_per_class": mean_per_class_recall(predicted, labels)}


def _check(scores: torch.Tensor, labels: torch.Tensor) -> None:
    if scores.dim() != 2 or labels.dim() != 1 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"expected scores [N, C] and labels [N], got {tuple(scores.shape)} and "
                         f"{tuple(labels.shape)}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= scores.shape[1]):
        raise ValueError(f"labels must lie in 0..{scores.shape[1] - 1}")
