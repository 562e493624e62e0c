"""Training objectives (pure): CLIP's symmetric contrastive loss, the zero-shot-initialised linear head, WiSE-FT."""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F

from ..classify import LOGIT_SCALE

#: CLIP clamps its learnable temperature so that logits are never scaled by more than 100
MAX_LOG_SCALE = math.log(100.0)


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy over in-batch similarities: images [B, D], texts [B, D] (pair i = row i) -> scalar.

    Features are L2-normalised here; logits = exp(log_scale) * cosines, as in CLIP (the scale is clamped by the
    training loop after every step, see clamp_logit_scale)."""
    images = F.normalize(image_features.float(), dim=-1)
    texts = F.normalize(text_features.float(), dim=-1)
    logits = log_scale.float().exp() * images @ texts.T  # [B, B]
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def clamp_logit_scale(model: torch.nn.Module) -> None:
    """Clamp CLIP's learnable log temperature into [0, ln 100] in place (CLIP's own rule)."""
    scale = getattr(model, "logit_scale", None)
    if isinstance(scale, torch.Tensor):
        with torch.no_grad():
            scale.clamp_(0.0, MAX_LOG_SCALE)


class LinearHead(torch.nn.Module):
    """logits = scale * normalize(features) @ weight.T + bias: features [N, D] -> [N, C].

    Initialised from a zero-shot classifier [D, C] with bias 0 and scale 100, it reproduces the zero-shot
    prediction exactly (epoch 0 == zero-shot accuracy)."""

    def __init__(self, classifier: torch.Tensor, scale: float = LOGIT_SCALE) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(classifier.float().T.contiguous().clone())  # [C, D]
        self.bias = torch.nn.Parameter(torch.zeros(classifier.shape[1]))
        self.scale = float(scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(features.float(), dim=-1) @ self.weight.T + self.bias


class VisualClassifier(torch.nn.Module):
    """CLIP's image tower plus a LinearHead: pixels [N, 3, S, S] -> logits [N, C]."""

    def __init__(self, visual: torch.nn.Module, head: LinearHead) -> None:
        super().__init__()
        self.visual = visual
        self.head = head

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual(pixels))


def wise(zero_shot: Mapping[str, torch.Tensor], fine_tuned: Mapping[str, torch.Tensor],
         alpha: float) -> dict[str, torch.Tensor]:
    """WiSE-FT: (1 - alpha) * zero-shot + alpha * fine-tuned, key by key (alpha 0 = zero-shot, 1 = fine-tuned).

    The end points are returned exactly (copies of the inputs), not recomputed in floating point."""
    if set(zero_shot) != set(fine_tuned):
        raise ValueError("WiSE-FT needs two state dicts of the same architecture")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"the WiSE-FT mixing weight must be between 0 and 1, not {alpha}")
    out = {}
    for key, start in zero_shot.items():
        end = fine_tuned[key]
        if alpha == 0.0 or not start.is_floating_point():
            out[key] = start.clone()
        elif alpha == 1.0:
            out[key] = end.clone()
        else:
            out[key] = (start.float() * (1 - alpha) + end.float() * alpha).to(start.dtype)
    return out
