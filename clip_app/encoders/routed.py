"""RoutedTextEncoder: one TextEncoder over CLIP's own text tower and a multilingual one, choosing per text.

Each text goes to the tower text_routing.route picks (plain English to CLIP's, anything else to the multilingual
tower in 'auto'); both towers keep their own feature caches. Both land in the image model's embedding space, so a
classifier may mix label rows of both towers.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..text_routing import CLIP_TOWER, MULTILINGUAL_TOWER, route
from .base import TextEncoder
from .text_models import check_pairing


class RoutedTextEncoder:
    """Texts -> float32 unit rows [N, D], each text encoded by the tower its routing picks."""

    def __init__(self, clip_tower: TextEncoder, multilingual: TextEncoder, routing: str = "auto",
                 image_identity: str | None = None) -> None:
        """Checks the pairing (TextModelMismatch): the multilingual tower must be aligned to the image model and
        give features of its width."""
        route("", routing)  # ValueError for an unknown mode
        check_pairing(getattr(multilingual, "name", "?"), image_identity or clip_tower.identity, clip_tower.dim,
                      multilingual.dim)
        self.clip_tower, self.multilingual, self.routing = clip_tower, multilingual, routing
        self.identity, self.name, self.dim = clip_tower.identity, clip_tower.name, clip_tower.dim

    def tower_for(self, text: str) -> str:
        """'clip' or 'multilingual': which tower encodes this text."""
        return route(text, self.routing)

    def tower_name(self, tower: str) -> str:
        """A readable name of one tower: 'CLIP ViT-B/32' or the multilingual model's name."""
        return f"CLIP {self.clip_tower.name}" if tower == CLIP_TOWER else self.multilingual.name

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> float32 unit rows [N, D]; each tower encodes (and caches) its own share, order kept."""
        texts = list(texts)
        out = torch.empty(len(texts), self.dim)
        for tower, encoder in ((CLIP_TOWER, self.clip_tower), (MULTILINGUAL_TOWER, self.multilingual)):
            rows = [i for i, text in enumerate(texts) if self.tower_for(text) == tower]
            if rows:
                out[rows] = encoder.encode_texts([texts[i] for i in rows]).float()
        return out

    def __repr__(self) -> str:
        return f"RoutedTextEncoder({self.clip_tower.name!r} + {self.multilingual.name!r}, {self.routing})"


def routed_text_encoder(image_encoder: TextEncoder, text_model: str | None, routing: str = "auto",
                        device: str = "cpu", model_dir: str | None = None) -> RoutedTextEncoder | None:
    """The text encoder of --text-model / --text-routing beside a loaded image encoder, or None without a text
    model. ModelLoadError when it cannot be loaded, TextModelMismatch when it is not aligned to the image model."""
    from .multilingual import load_text_model
    from .text_models import known_text_model

    if not text_model:
        return None
    if known_text_model(text_model) is not None:  # a known name paired wrongly is refused before any download
        check_pairing(text_model, image_encoder.identity, image_encoder.dim)
    tower = load_text_model(text_model, device=device, model_dir=model_dir)
    return RoutedTextEncoder(image_encoder, tower, routing, image_encoder.identity)
