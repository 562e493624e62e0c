"""The Encoder protocol: what the library, the app and the benchmarks need of a CLIP-like model.

Image and text towers are separate protocols, so a text-only encoder (a multilingual text tower) can stand beside
an image encoder of the same embedding space. Every backend (PyTorch, ONNX Runtime) and every model family
(OpenAI CLIP, open_clip, Chinese-CLIP) implements them; the backend never changes the identity.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence, runtime_checkable

import torch
from PIL import Image


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the model and the way out."""


@runtime_checkable
class TextEncoder(Protocol):
    """A text tower: strings -> float32 unit rows [N, D] on the CPU."""

    identity: str  #: what a library is stamped with: a model name or 'sha256:<digest>' of a weights file
    name: str  #: a readable name
    dim: int  #: feature width D

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> float32 unit rows [N, D]; long texts are truncated."""
        ...


@runtime_checkable
class ImageEncoder(Protocol):
    """An image tower: PIL images (or preprocessed pixels) -> float32 unit rows [N, D] on the CPU."""

    identity: str
    name: str
    dim: int
    device: str
    input_resolution: int  #: the square input size of the tower, in pixels
    decode_min_side: int  #: images may be decoded at a reduced scale down to this shorter side
    batch_size: int
    preprocess: Callable[[Image.Image], torch.Tensor]  #: PIL image -> [3, H, W]

    def encode_images(self, images: Sequence[Image.Image], batch_size: int | None = None) -> torch.Tensor:
        """PIL images -> float32 unit rows [N, D], in batches."""
        ...

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels [N, 3, H, W] -> float32 unit rows [N, D] (one forward pass)."""
        ...


@runtime_checkable
class Encoder(ImageEncoder, TextEncoder, Protocol):
    """Both towers of one embedding space, plus how the model was named (for advice in messages)."""

    family: str  #: the model family (clip, open_clip, cn_clip): chooses the family's own prompts
    source: str  #: the model as given on a command line (--model)
    model_dir: str | None  #: the weights folder (--model-dir), or None for the default
    loaded: bool  #: True once the weights are in memory (a lazy encoder knows its identity before that)


def l2_normalize(features: torch.Tensor) -> torch.Tensor:
    """Float32 rows of unit length: [N, D] -> [N, D]."""
    features = features.float()
    return features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
