"""Helpers for the app tests: colour image files, an App over the colour model, a server on a free port."""

from __future__ import annotations

import io
import socket
from pathlib import Path

from clip_app.encoders import ClipEncoder
from clip_app.library import FeatureLibrary
from clip_app.service import App
from tests.support.fakes import solid_image


def png_bytes(colour: str | tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> bytes:
    """A solid-colour PNG's bytes."""
    buffer = io.BytesIO()
    solid_image(colour, size).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: Path, colour: str | tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> Path:
    """Write a solid-colour PNG and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(colour, size))
    return path


def make_app(root: Path, encoder: ClipEncoder, colours: tuple[str, ...] = (), max_file_size: int = 20 << 20) -> App:
    """An App over a fresh library in root/ (gallery/, features_library.pth), holding one image per colour."""
    library = FeatureLibrary(root / "gallery", root / "features_library.pth", encoder)
    app = App(encoder, library, max_file_size=max_file_size)
    if colours:
        files = [write_png(root / "inbox" / f"{name}.png", name) for name in colours]
        report = app.add_images(files)
        assert len(report.added) == len(colours), report.summary()
    return app


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
