"""Helpers for the library and index tests: small image bytes, library factories, a second model."""

from __future__ import annotations

import io
from pathlib import Path

from clip.clip import _transform

from clip_app.encoders import ClipEncoder
from clip_app.library import FeatureLibrary
from tests.support.fakes import TINY_RESOLUTION, ColorClip, color_encoder, solid_image


def image_bytes(colour: str | tuple[int, int, int], fmt: str = "PNG", size: tuple[int, int] = (24, 20)) -> bytes:
    """Encoded bytes of a small solid-colour image."""
    buffer = io.BytesIO()
    solid_image(colour, size).save(buffer, format=fmt)
    return buffer.getvalue()


def write_image(path: Path, colour: str | tuple[int, int, int], fmt: str = "PNG",
                size: tuple[int, int] = (24, 20)) -> Path:
    """Write a small solid-colour image file and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(colour, fmt, size))
    return path


def other_colour_encoder() -> ClipEncoder:
    """The colour model under another identity: a 'different model' for mismatch tests."""
    return ClipEncoder.from_model(ColorClip(), _transform(TINY_RESOLUTION), name="other-colour-model", batch_size=4)


def open_library(root: Path, encoder: ClipEncoder | None = None, **kwargs: object) -> FeatureLibrary:
    """A FeatureLibrary over root/gallery and root/features_library.pth."""
    return FeatureLibrary(root / "gallery", root / "features_library.pth", encoder or color_encoder(),
                          **kwargs)  # type: ignore[arg-type]
