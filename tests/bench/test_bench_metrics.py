"""Classification metrics: hand-computed answers, and the same numbers as sklearn and CLIP_benchmark's code."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from clip_app.bench.imagenet.metrics import (
    classification_metrics,
    mean_per_class_recall,
    per_class_recall,
    topk_accuracy,
    topk_hits,
    topk_predictions,
)
from tests.support.clip_benchmark_compat import clip_benchmark_accuracy


def test_topk_by_hand() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.2],   # true 1: rank 1
                           [0.8, 0.1, 0.7, 0.6],   # true 2: rank 2
                           [0.5, 0.4, 0.3, 0.9]])  # true 1: rank 3
    labels = torch.tensor([1, 2, 1])
    assert topk_predictions(scores, 2).tolist() == [[1, 2], [0, 2], [3, 0]]
    assert topk_hits(scores, labels, 1).tolist() == [True, False, False]
    assert topk_hits(scores, labels, 2).tolist() == [True, True, False]
    assert topk_accuracy(scores, labels, (1, 2, 3, 5)) == {1: 1 / 3, 2: 2 / 3, 3: 1.0, 5: 1.0}


def test_mean_per_class_recall_by_hand() -> None:
    labels = torch.tensor([0, 0, 0, 0, 1, 2, 2])
    predicted = torch.tensor([0, 0, 0, 1, 1, 0, 2])
    assert per_class_recall(predicted, labels) == {0: 0.75, 1: 1.0, 2: 0.5}
    assert mean_per_class_recall(predicted, labels) == pytest.approx((0.75 + 1 + 0.5) / 3)
    # plain accuracy is 5/7: the per-class mean weighs the small classes up
    assert mean_per_class_recall(predicted, labels) != pytest.approx(5 / 7)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_classes_never_true_do_not_count() -> None:
    """Predicting a class that no image has lowers nothing but the true class's recall (as sklearn does)."""
    labels = torch.tensor([3, 3])
    predicted = torch.tensor([3, 7])
    assert mean_per_class_recall(predicted, labels) == 0.5
    assert balanced_accuracy_score(labels.numpy(), predicted.numpy()) == 0.5


def test_bad_shapes_and_labels_raise() -> None:
    with pytest.raises(ValueError):
        topk_accuracy(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError):
        topk_accuracy(torch.zeros(2, 4), torch.tensor([0, 4]))
    with pytest.raises(ValueError):
        per_class_recall(torch.zeros(2), torch.zeros(3))
    assert math.isnan(topk_accuracy(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_numbers_as_sklearn_and_clip_benchmark(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(200, 30, generator=generator)
    labels = torch.randint(0, 30, (200,), generator=generator)
    scores[torch.arange(0, 200, 3), labels[::3]] += 2.0  # better than chance, so top-1 and top-5 differ
    ours = classification_metrics(scores, labels)
    acc1, acc5 = clip_benchmark_accuracy(scores, labels, topk=(1, 5))
    assert ours["top1"] == pytest.approx(acc1, abs=1e-12)
    assert ours["top5"] == pytest.approx(acc5, abs=1e-12)
    assert 0 < ours["top1"] < ours["top5"] < 1
    balanced = balanced_accuracy_score(labels.numpy(), scores.argmax(dim=1).numpy())
    assert ours["mean_per_class"] == pytest.approx(balanced, abs=1e-12)
