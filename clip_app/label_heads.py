"""Trained classification heads carried by label sets (pure): logits = scale * normalize(f) @ weight.T + bias.

A label set made by `python -m clip_app.finetune classify` holds the head it trained; the app uses it instead of
the zero-shot prompts when the set's labels are classified with the model the head was trained with (the
fine-tuned DIR/model.pt, matched by identity). JSON form (inside label_sets.json, under "heads"):
{"model": "<identity>", "scale": 100.0, "shape": [C, D], "weight": "<base64 float32 LE>", "bias": "<base64>"}.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .classify import LabelScore


class HeadError(ValueError):
    """A stored head that cannot be used (wrong shape, damaged data)."""


def _encode(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.detach().cpu().float().contiguous().numpy().astype("<f4").tobytes()).decode()


def _decode(text: str, count: int) -> torch.Tensor:
    try:
        values = np.frombuffer(base64.b64decode(text, validate=True), dtype="<f4")
    except (ValueError, TypeError) as exc:
        raise HeadError(f"damaged head data ({exc})") from None
    if values.size != count:
        raise HeadError(f"head data holds {values.size} numbers, expected {count}")
    return torch.from_numpy(values.astype(np.float32))


@dataclass(frozen=True)
class LabelHead:
    """A linear head over one model's image features: weight [C, D], bias [C], scale; `model` is its identity."""

    model: str
    weight: torch.Tensor
    bias: torch.Tensor
    scale: float = 100.0

    def to_json(self) -> dict:
        """The JSON form (float32 little-endian, base64)."""
        return {"model": self.model, "scale": float(self.scale), "shape": list(self.weight.shape),
                "weight": _encode(self.weight), "bias": _encode(self.bias)}

    @classmethod
    def from_json(cls, raw: object) -> "LabelHead":
        """Parse and check the JSON form; HeadError when it is damaged."""
        try:
            rows, dim = (int(x) for x in raw["shape"])  # type: ignore[index]
            weight = _decode(raw["weight"], rows * dim).view(rows, dim)  # type: ignore[index]
            bias = _decode(raw["bias"], rows)  # type: ignore[index]
            return cls(str(raw["model"]), weight, bias, float(raw.get("scale", 100.0)))  # type: ignore[index,union-attr]
        except HeadError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise HeadError(f"damaged head entry ({exc})") from None

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Image features [N, D] -> logits [N, C]."""
        features = features.float()
        features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return self.scale * features @ self.weight.T + self.bias

    def rank(self, labels: Sequence[str], feature: torch.Tensor) -> list[LabelScore]:
        """Every label with the head's probability and the cosine to its weight row, for one feature [D]."""
        if len(labels) != len(self.weight):
            raise HeadError(f"the head has {len(self.weight)} classes, the label set {len(labels)}")
        probs = self.logits(feature.reshape(1, -1))[0].softmax(dim=-1)
        rows = self.weight / self.weight.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        unit = feature.float() / feature.float().norm().clamp_min(1e-12)
        cos = rows @ unit
        order = sorted(range(len(labels)), key=lambda i: (-float(probs[i]), i))
        return [LabelScore(labels[i], float(probs[i]), float(cos[i])) for i in order]
