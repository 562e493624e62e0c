"""Helpers for the reliability tests: the bad and awkward files, a layout-sensitive model, folder snapshots."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from clip.clip import _transform
from PIL import Image

from clip_app.encoders import ClipEncoder
from tests.support.fakes import TINY_RESOLUTION, _Visual
from tests.support.image_files import animated_gif, encode, minimal_pdf, png_bomb

#: modules a forkserver imports once, so the reliability tests' child processes start in a fraction of a second
PRELOAD = ["tests.support.reliability_helpers", "tests.support.fakes", "tests.support.library_helpers",
           "tests.support.app_helpers", "gradio"]


@dataclass(frozen=True)
class Sample:
    """One input file: its name, its bytes, and what should happen to it."""

    name: str
    data: bytes
    expect: str  # bad files: a regex the error must match; good files: the colour word it must be found by


def truncated_jpeg() -> bytes:
    """The first half of a noisy JPEG."""
    data = encode(Image.effect_noise((256, 256), 50).convert("RGB"), "JPEG", quality=90)
    return data[: len(data) // 2]


def bad_samples() -> list[Sample]:
    """Files that must be refused with a clear message (the message names the file and the reason)."""
    return [
        Sample("empty.jpg", b"", r"empty\.jpg: the file is empty \(0 bytes\)"),
        Sample("notes.jpg", b"hello, this is not a picture\n" * 4, r"notes\.jpg: not an image"),
        Sample("report.jpg", minimal_pdf(), r"report\.jpg: not an image"),
        Sample("cut.jpg", truncated_jpeg(), r"cut\.jpg: the image file is truncated"),
        Sample("bomb.png", png_bomb(30000, 30000), r"bomb\.png: .*decompression bomb"),
    ]


def heic_bytes(rgb: tuple[int, int, int] = (220, 20, 20), size: tuple[int, int] = (40, 30)) -> bytes:
    """A real HEIC file (HEVC-coded through pillow-heif)."""
    import pillow_heif  # type: ignore[import-not-found]

    pillow_heif.register_heif_opener()
    return encode(Image.new("RGB", size, rgb), "HEIF", quality=90)


def awkward_good_samples() -> list[Sample]:
    """Unusual but valid images that must be stored byte for byte and found by their colour."""
    palette = Image.new("P", (12, 12), 0)
    palette.putpalette([0, 0, 0, 20, 20, 220] + [0] * 762)
    palette.paste(1, (0, 0, 12, 12))  # all blue; index 0 (black) is the transparent one
    palette_data = encode(palette, "PNG", transparency=0)
    return [
        Sample("cmyk.jpg", encode(Image.new("CMYK", (20, 10), (0, 255, 255, 0)), "JPEG", quality=95), "red"),
        Sample("deep.png", encode(Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)), "PNG"), "grey"),
        Sample("palette.png", palette_data, "blue"),
        Sample("clear.png", encode(Image.new("RGBA", (10, 10), (20, 20, 220, 0)), "PNG"), "white"),  # alpha 0
        Sample("la.png", encode(Image.new("LA", (10, 10), (0, 0)), "PNG"), "white"),
        Sample("anim.gif", animated_gif(((220, 20, 20), (20, 20, 220), (20, 180, 20))), "red"),
        Sample("leaf.webp", encode(Image.new("RGB", (12, 12), (20, 180, 20)), "WEBP", lossless=True), "green"),
        Sample("dot.png", encode(Image.new("RGB", (1, 1), (240, 230, 20)), "PNG"), "yellow"),
        Sample("IMG_0001.HEIC", heic_bytes((250, 140, 0)), "orange"),
    ]


class LayoutClip(torch.nn.Module):
    """A model that sees WHERE colours are: the image feature is its 4 x 4 grid of mean colours (minus the mean), so
    a rotated or mirrored picture gets a very different feature (the colour model cannot tell them apart)."""

    def __init__(self) -> None:
        super().__init__()
        self.visual = _Visual()
        self.dtype = torch.float32

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        grid = torch.nn.functional.adaptive_avg_pool2d(pixels.float(), 4)  # [N, 3, 4, 4]
        return (grid - grid.mean(dim=(2, 3), keepdim=True)).flatten(1)  # [N, 48]

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(tokens), 48)


def layout_encoder() -> ClipEncoder:
    """The real ClipEncoder around LayoutClip."""
    return ClipEncoder.from_model(LayoutClip(), _transform(TINY_RESOLUTION), name="layout-test", batch_size=4)


def folder_state(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root (hidden ones too): a snapshot to compare."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def png(rgb: tuple[int, int, int] | str, size: tuple[int, int] = (20, 16)) -> bytes:
    """A small solid PNG of a colour name or RGB triple."""
    from tests.support.fakes import COLOURS

    colour = COLOURS[rgb] if isinstance(rgb, str) else rgb
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def unique_png(n: int, size: tuple[int, int] = (8, 8)) -> bytes:
    """A tiny PNG whose bytes are different for every n < 65536."""
    return png((n % 256, (n // 256) % 256, 77), size)


def crash_child(root: str, start: int, journal: str, remove_every: int = 4, compact_rows: int | None = None) -> None:
    """Run in a child process until it is killed: add one image per call (every remove_every-th call removes one
    of its own images instead). One line goes to the journal in a single write() after each call returns:
    'A <id> <sha256>' or 'R <id>', and 'r <id>' before a remove starts (a remove cut short may or may not
    have happened). compact_rows lowers the journal's limit so that whole-file rewrites (compactions) happen often."""
    import clip_app.library.store as store
    from tests.support.fakes import color_encoder
    from tests.support.library_helpers import open_library

    if compact_rows is not None:
        store.COMPACT_MIN_ROWS = compact_rows
    library = open_library(Path(root), color_encoder())
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    mine: list[int] = []
    n = start
    while True:
        if mine and n % remove_every == 0:
            victim = mine.pop(0)
            os.write(fd, f"r {victim}\n".encode())
            library.remove([victim])
            os.write(fd, f"R {victim}\n".encode())
        else:
            data = unique_png(n)
            result = library.add([(data, f"{n}.png")]).results[0]
            mine.append(result.id)
            os.write(fd, f"A {result.id} {hashlib.sha256(data).hexdigest()}\n".encode())
        n += 1


def serve_colour_app(root: str, port: int, colours: tuple[str, ...], ready: object) -> None:
    """Run in a child process: an App over the colour model holding one image per colour, served on port until the
    process is terminated; puts {colour: ID} on the ready queue once the server answers."""
    from clip_app import ui
    from tests.support.app_helpers import make_app
    from tests.support.fakes import color_encoder

    app = make_app(Path(root), color_encoder(), colours)
    demo = ui.build_demo(app)
    ui.launch(demo, gallery_dir=Path(root) / "gallery", port=port, prevent_thread_lock=True, quiet=True)
    ready.put({entry.name.removesuffix(".png"): entry.id for entry in app.library})  # type: ignore[attr-defined]
    threading.Event().wait()  # serve until terminated
