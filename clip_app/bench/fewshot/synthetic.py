"""Made-up unit features for timing the few-shot protocol without a data set or a model."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ...encoders import l2_normalize

N_VAL = 1000
DIM = 512


class SyntheticFeatures(NamedTuple):
    text_weights: torch.Tensor  # [D, C] unit columns
    train: torch.Tensor  # [C * shots, D] unit rows
    train_labels: torch.Tensor  # [C * shots]
    val: torch.Tensor  # [N_VAL, D]
    val_labels: torch.Tensor  # [N_VAL]


def synthetic_features(n_classes: int, shots: int, n_val: int = N_VAL, dim: int = DIM,
                       seed: int = 0) -> SyntheticFeatures:
    """CLIP-like geometry: every image shares a common direction (image-image cosines ~0.5), plus its class centre
    and noise; a class's text column is its centre plus other noise (zero-shot well above chance, not perfect)."""
    if n_classes < 2:
        raise ValueError("--synthetic needs at least 2 classes")
    gen = torch.Generator().manual_seed(seed)
    common = l2_normalize(torch.randn(1, dim, generator=gen))
    centres = l2_normalize(torch.randn(n_classes, dim, generator=gen))
    text = l2_normalize(centres + 5.0 * torch.randn(n_classes, dim, generator=gen) / dim ** 0.5).T.contiguous()

    def images(labels: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(len(labels), dim, generator=gen) / dim ** 0.5
        return l2_normalize(1.2 * common + 0.8 * centres[labels] + 3.0 * noise)

    train_labels = torch.arange(n_classes).repeat_interleave(shots)
    val_labels = torch.arange(n_val) % n_classes
    return SyntheticFeatures(text, images(train_labels), train_labels, images(val_labels), val_labels)
