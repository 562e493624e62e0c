"""Shared fixtures: a tiny real CLIP checkpoint loaded through the product's loader, and the colour model."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

from clip_app.encoders import ClipEncoder  # noqa: E402
from tests.support.fakes import color_encoder, save_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny CLIP state dict (widths of 64) saved to disk."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("weights") / "tiny-clip.pt")


@pytest.fixture(scope="session")
def tiny_encoder(tiny_checkpoint: Path) -> ClipEncoder:
    """The tiny CLIP loaded by path through clip.load(..., jit=False), as the product loads real checkpoints."""
    return ClipEncoder(str(tiny_checkpoint), device="cpu", batch_size=4)


@pytest.fixture()
def colour_encoder() -> ClipEncoder:
    """A fresh ClipEncoder around the deterministic colour model (its own text cache)."""
    return color_encoder()
