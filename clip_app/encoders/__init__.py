"""Encoders: the Encoder protocol and its implementations (PyTorch CLIP today)."""

from .base import Encoder, ImageEncoder, ModelLoadError, TextEncoder, l2_normalize
from .clip_torch import (
    CHECKPOINT_SUFFIXES,
    DEFAULT_BATCH_SIZE,
    ClipEncoder,
    encode_text_trimmed,
    file_sha256,
    has_causal_text_tower,
    model_identity,
    official_checksums,
)

__all__ = [
    "CHECKPOINT_SUFFIXES", "DEFAULT_BATCH_SIZE", "ClipEncoder", "Encoder", "ImageEncoder", "ModelLoadError",
    "TextEncoder", "encode_text_trimmed", "file_sha256", "has_causal_text_tower", "l2_normalize",
    "model_identity", "official_checksums",
]
