"""Thumbnails of gallery images: what gallery pages and search results send to the browser.

Each thumbnail is at most THUMB_SIDE (384) pixels on its longer side, upright (EXIF applied), alpha on white, stored
as WebP (JPEG where Pillow lacks WebP). They live in a folder *beside* the gallery, never inside it:
``<gallery>.thumbs/`` (``photos/`` -> ``photos.thumbs/``), named by the image's sha256 (``<sha256>.webp``), so a
changed file never shows an old thumbnail and the folder needs no index of its own. A thumbnail is made when its
image is added (by the app) or on first view, removed with its image, and `repair` (prune) removes the ones no
image owns; any of them can be deleted at any time (it is made again).
"""

from __future__ import annotations

import io
import logging
import os
import stat
from pathlib import Path
from typing import Iterable

from PIL import Image, features

from .files import replace_atomically
from .images import ImageError, decode_image, read_bytes

log = logging.getLogger(__name__)

THUMB_SIDE = 384
THUMB_SUFFIX = ".thumbs"
FORMAT, EXTENSION = ("WEBP", ".webp") if features.check("webp") else ("JPEG", ".jpg")
QUALITY = 80


def thumbs_dir(gallery_dir: Path) -> Path:
    """The thumbnails folder of a gallery: a sibling named '<gallery name>.thumbs'."""
    gallery_dir = Path(gallery_dir).expanduser().absolute()
    return gallery_dir.parent / (gallery_dir.name + THUMB_SUFFIX)


def make_thumbnail(data: bytes, name: str = "image", side: int = THUMB_SIDE) -> bytes:
    """The thumbnail bytes of an image (longer side <= side, upright, RGB on white); ImageError when unusable."""
    image = decode_image(data, name, fit_side=side)  # reduced-scale decoding: never the full frame of a big JPEG
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format=FORMAT, quality=QUALITY, method=4) if FORMAT == "WEBP" else \
        image.save(out, format=FORMAT, quality=QUALITY, optimize=True)
    return out.getvalue()


class Thumbnails:
    """The thumbnails folder of one gallery: make, find, remove and prune thumbnails by image sha256."""

    def __init__(self, gallery_dir: Path, side: int = THUMB_SIDE) -> None:
        self.gallery_dir = Path(gallery_dir).expanduser().absolute()
        self.folder = thumbs_dir(self.gallery_dir)
        self.side = int(side)

    def path_of(self, sha256: str) -> Path:
        """Where the thumbnail of the image with this sha256 lives (it may not exist yet)."""
        return self.folder / f"{sha256.lower()}{EXTENSION}"

    def ensure(self, sha256: str, source: Path | bytes, name: str = "image") -> Path:
        """The thumbnail's path, made from the image file (or bytes) first when missing; ImageError when the
        image cannot be read or decoded (a folder, a link out of the gallery, damaged data)."""
        target = self.path_of(sha256)
        if not isinstance(source, (bytes, bytearray)):
            self._require_inside(Path(source), name)  # also when the thumbnail exists: the entry may have changed
        if target.is_file():
            return target
        if isinstance(source, (bytes, bytearray)):
            data, label = read_bytes(source, name)
        else:
            data, label = read_bytes(Path(source), name)
        thumb = make_thumbnail(data, label, self.side)
        return replace_atomically(target, lambda handle: handle.write(thumb))

    def _require_inside(self, path: Path, name: str) -> None:
        """Only a regular file of the gallery is shown: a link to a file outside it, a folder, a FIFO never are."""
        try:
            info = os.lstat(path)
            real = path.resolve(strict=True)
        except OSError:
            raise ImageError(name, "file not found") from None
        if stat.S_ISLNK(info.st_mode) and not real.is_relative_to(self.gallery_dir.resolve()):
            raise ImageError(name, "is a symbolic link to a file outside the gallery; it is not shown")
        if real.is_dir():
            raise ImageError(name, "is a folder, not an image file")
        if not real.is_file():
            raise ImageError(name, "is not a regular file")

    def remove(self, sha256: str) -> bool:
        """Delete the thumbnail of this image; True when there was one."""
        try:
            self.path_of(sha256).unlink()
            return True
        except FileNotFoundError:
            return False

    def prune(self, keep: Iterable[str]) -> list[str]:
        """Delete every thumbnail (and leftover temp file) whose image is not in `keep` (sha256s); returns the
        names removed."""
        wanted = {f"{h.lower()}{EXTENSION}" for h in keep}
        removed = []
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return removed
        for entry in entries:
            if entry.name not in wanted and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(entry.name)
        return removed


__all__ = ["THUMB_SIDE", "Thumbnails", "make_thumbnail", "thumbs_dir", "ImageError"]
