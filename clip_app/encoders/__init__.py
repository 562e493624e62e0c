"""Encoders: the Encoder protocol and its implementations (PyTorch CLIP; multilingual text towers)."""

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
from .multilingual import CachedTextTower, load_text_model
from .routed import RoutedTextEncoder, routed_text_encoder
from .text_models import KNOWN_TEXT_MODELS, TextModelInfo, TextModelMismatch, check_pairing, known_text_model

__all__ = [
    "CachedTextTower", "KNOWN_TEXT_MODELS", "RoutedTextEncoder", "TextModelInfo", "TextModelMismatch",
    "check_pairing", "known_text_model", "load_text_model", "routed_text_encoder",
    "CHECKPOINT_SUFFIXES", "DEFAULT_BATCH_SIZE", "ClipEncoder", "Encoder", "ImageEncoder", "ModelLoadError",
    "TextEncoder", "encode_text_trimmed", "file_sha256", "has_causal_text_tower", "l2_normalize",
    "model_identity", "official_checksums",
]
