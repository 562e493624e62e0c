"""Helpers for the app tests: colour image files, an App over the colour model, a server on a free port."""

from __future__ import annotations

import io
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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


@contextmanager
def served(app: App, gallery_dir: Path, **launch_options: object) -> Iterator[str]:
    """The app's interface served on a free port (ui.launch with these options) for the with-block: its URL."""
    from clip_app import ui

    demo = ui.build_demo(app)
    port = free_port()
    ui.launch(demo, gallery_dir=gallery_dir, port=port, prevent_thread_lock=True, quiet=True, **launch_options)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
