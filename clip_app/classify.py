"""Zero-shot classification (pure): label parsing, classifier weights, probabilities, cosines and tags."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from .prompts import fill

#: CLIP's learned temperature, fixed at its trained maximum (exp(4.6052) = 100) in every OpenAI model.
LOGIT_SCALE = 100.0
DEFAULT_TAG_THRESHOLD = 0.25
MAX_LABEL_CHARS = 300


class LabelError(ValueError):
    """The labels given cannot be used (none left after cleaning, or one is too long)."""


class TextEncoder(Protocol):
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor: ...


def parse_labels(text: str | Sequence[str]) -> list[str]:
    """Labels from free text (commas or newlines) or a list: trimmed, inner spaces collapsed, empties and
    duplicates (ignoring case) dropped, order kept. No label left is a LabelError."""
    parts = re.split(r"[,\n\r]+", text) if isinstance(text, str) else [str(p) for p in text]
    labels: list[str] = []
    seen: set[str] = set()
    for part in parts:
        label = " ".join(part.split())
        if not label or label.casefold() in seen:
            continue
        if len(label) > MAX_LABEL_CHARS:
            raise LabelError(f"label too long ({len(label)} characters, at most {MAX_LABEL_CHARS}): {label[:40]}...")
        seen.add(label.casefold())
        labels.append(label)
    if not labels:
        raise LabelError("no labels: type at least one label (separate labels with commas or new lines)")
    return labels


def build_classifier(encoder: TextEncoder, labels: Sequence[str],
                     templates: Sequence[str] | Sequence[Sequence[str]]) -> torch.Tensor:
    """Classifier weights [D, C]: each label's prompts encoded, normalised, averaged over templates, renormalised.
    `templates` is one list for every label, or one list per label (e.g. Chinese templates for Chinese labels)."""
    if not labels:
        raise LabelError("no labels to classify against")
    per_label_templates = per_label(labels, templates)
    prompts = [fill(t, label) for label, own in zip(labels, per_label_templates) for t in own]
    features = encoder.encode_texts(prompts).float()  # [sum of T, D], unit rows
    rows, start = [], 0
    for own in per_label_templates:
        rows.append(features[start:start + len(own)].mean(dim=0))
        start += len(own)
    weights = torch.stack(rows)  # [C, D]
    weights = weights / weights.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return weights.T.contiguous()


def per_label(labels: Sequence[str], templates: Sequence[str] | Sequence[Sequence[str]]) -> list[tuple[str, ...]]:
    """The templates of each label: one shared list repeated, or the per-label lists checked against the labels."""
    if not templates:
        raise ValueError("no prompt templates")
    if isinstance(templates[0], str):
        return [tuple(templates)] * len(labels)  # type: ignore[arg-type]
    if len(templates) != len(labels) or any(not own for own in templates):
        raise ValueError("per-label templates need one non-empty list of templates per label")
    return [tuple(own) for own in templates]


def cosines(image_features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """Cosine of each image to each label: [N, D] @ [D, C] -> [N, C]."""
    return image_features.float() @ classifier.float()


def probabilities(cos: torch.Tensor, logit_scale: float = LOGIT_SCALE) -> torch.Tensor:
    """Softmax over labels of scaled cosines: [N, C] -> [N, C], rows sum to 1."""
    return (logit_scale * cos).softmax(dim=-1)


@dataclass(frozen=True)
class LabelScore:
    label: str
    probability: float
    cosine: float


def rank(labels: Sequence[str], image_feature: torch.Tensor, classifier: torch.Tensor) -> list[LabelScore]:
    """Every label with its probability and cosine for one image feature [D], best first."""
    cos = cosines(image_feature.reshape(1, -1), classifier)[0]
    probs = probabilities(cos.unsqueeze(0))[0]
    order = sorted(range(len(labels)), key=lambda i: (-float(probs[i]), i))
    return [LabelScore(labels[i], float(probs[i]), float(cos[i])) for i in order]


def tags(scores: Sequence[LabelScore], threshold: float = DEFAULT_TAG_THRESHOLD) -> list[LabelScore]:
    """Multi-label mode: every label whose cosine is at least `threshold`, highest cosine first."""
    return sorted((s for s in scores if s.cosine >= threshold), key=lambda s: -s.cosine)


class ClassifierCache:
    """A small thread-safe LRU of classifier weights keyed by (labels, templates), so a label set is built once:
    also when several requests ask for it at once (they wait for the first one's build instead of encoding the
    same prompts again; the ImageNet set with the 80 templates is 80,000 prompts)."""

    def __init__(self, size: int = 32) -> None:
        self._items: OrderedDict[tuple[tuple[str, ...], tuple], torch.Tensor] = OrderedDict()
        self._building: dict[tuple[tuple[str, ...], tuple], threading.Event] = {}
        self._size = size
        self._lock = threading.Lock()

    def get(self, encoder: TextEncoder, labels: Sequence[str],
            templates: Sequence[str] | Sequence[Sequence[str]]) -> torch.Tensor:
        """Classifier [D, C] for these labels and templates (shared or per label), built on first use (once,
        however many ask)."""
        key = (tuple(labels), tuple(t if isinstance(t, str) else tuple(t) for t in templates))
        while True:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
                building = self._building.get(key)
                if building is None:
                    building = self._building[key] = threading.Event()
                    break  # this request builds it
            building.wait()  # another request builds it; look again (if it failed, one of the waiters builds it)
        try:
            weights = build_classifier(encoder, labels, templates)
            with self._lock:
                self._items[key] = weights
                while len(self._items) > self._size:
                    self._items.popitem(last=False)
            return weights
        finally:
            with self._lock:
                del self._building[key]
            building.set()
