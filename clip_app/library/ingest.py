"""Ingest: read -> hash -> decode -> encode, shared by add, first-run indexing, repair and rebuild.

Decoded images are preprocessed at once and encoded batch_size at a time; a gallery reader remembers what it read
by file signature, so a second pass (under the write lock) reads only files that changed since the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from ..encoders import ClipEncoder
from ..files import regular_file_signature, sha256_bytes
from ..images import ImageError, decode_image, image_extension, read_bytes

Progress = Callable[[int, int], None]


@dataclass
class Candidate:
    """An image on its way into the library (bytes are dropped once the file is written)."""

    index: int
    name: str
    sha256: str
    ext: str
    size: int
    data: bytes | None = None
    source: str | None = None  # gallery file name when it already lies in the gallery
    id_hint: int | None = None
    feature: torch.Tensor | None = None


class Batcher:
    """Preprocesses decoded images at once (a full-size photo is dropped right away; only its model input
    [3, H, W] waits) and encodes them batch_size at a time into their candidates' .feature."""

    def __init__(self, encoder: ClipEncoder, batch_size: int, on_done: Callable[[int], None] | None = None) -> None:
        self.encoder, self.batch_size, self.on_done = encoder, batch_size, on_done
        self.pending: list[tuple[Any, torch.Tensor]] = []

    def push(self, candidate: Any, image: Image.Image) -> None:
        """Queue an image; its feature [D] lands in candidate.feature when its batch is encoded."""
        self.pending.append((candidate, self.encoder.preprocess(image)))
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        rows = self.encoder.encode_pixels(torch.stack([pixels for _, pixels in self.pending]))
        for (candidate, _), row in zip(self.pending, rows):
            candidate.feature = row
        if self.on_done:
            self.on_done(len(self.pending))
        self.pending = []


@dataclass
class FileRead:
    """One gallery file as read: its (inode, mtime, size) at that moment, sha256 and size; after a decoding read also
    its format and, once encoded, its feature [D], or the ImageError saying why it is not a usable image."""

    name: str
    signature: tuple[int, int, int]
    sha256: str
    size: int
    decoded: bool = False
    ext: str = ""
    feature: torch.Tensor | None = None
    error: ImageError | None = None


class GalleryReader:
    """Reads gallery files for repair and rebuild, each once: a read (hash, and when asked decoding and batched
    encoding) is reused as long as the file's (inode, mtime, size) is unchanged. So the work done on a snapshot outside
    the write lock is not redone under it; only files that changed since are read again."""

    def __init__(self, folder: Path, encoder: ClipEncoder, batch_size: int,
                 on_encoded: Callable[[int], None] | None = None) -> None:
        self.folder, self.encoder = folder, encoder
        self._batcher = Batcher(encoder, batch_size, on_encoded)
        self._known: dict[str, FileRead] = {}

    def stop_reporting(self) -> None:
        """No more progress callbacks (the work under the lock is not part of the progress shown)."""
        self._batcher.on_done = None

    def read(self, name: str, decode: bool | Callable[[FileRead], bool] = False) -> FileRead | None:
        """The file's hash and size; None when it is not a regular file (missing, a folder, a link); ImageError when it
        cannot be read. decode (or decode(read) returning True): also decode it and queue it for encoding (see
        flush); a decoding failure is kept in .error."""
        path = self.folder / name
        signature = None if path.is_symlink() else regular_file_signature(path)  # a link is never followed
        if signature is None:
            return None
        known = self._known.get(name)
        if known is not None and known.signature == signature and (known.decoded or not _wants(decode, known)):
            return known
        data, _ = read_item(path, name)
        found = FileRead(name=name, signature=signature, sha256=sha256_bytes(data), size=len(data))
        if _wants(decode, found):
            found.decoded = True
            try:
                found.ext, image = decode_for(self.encoder, data, name)
            except ImageError as exc:
                found.error = exc
            else:
                self._batcher.push(found, image)
        self._known[name] = found
        return found

    def flush(self) -> None:
        """Encode what is queued: every decoded read has its feature afterwards."""
        self._batcher.flush()


def _wants(decode: bool | Callable[[FileRead], bool], found: FileRead) -> bool:
    return decode(found) if callable(decode) else bool(decode)


def read_item(item: Path | str | bytes | bytearray | tuple, name: str | None = None) -> tuple[bytes, str]:
    """(bytes, display name) of a path, bytes or (bytes, name); ImageError when a file cannot be read."""
    if isinstance(item, tuple):
        data, item_name = item
        return read_bytes(bytes(data), str(item_name))
    if isinstance(item, (bytes, bytearray)):
        return read_bytes(item) if name is None else read_bytes(item, name)
    return read_bytes(Path(item), str(item) if name is None else name)


def decode_for(encoder: ClipEncoder, data: bytes, name: str) -> tuple[str, Image.Image]:
    """(canonical extension, image decoded at the encoder's scale); ImageError when the bytes are no image."""
    return image_extension(data, name), decode_image(data, name, min_side=encoder.decode_min_side)


class Counter:
    """progress(done, total) as work completes: call the counter with how many items were just done."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self, count: int = 1) -> None:
        self.done += count
        if self.progress:
            self.progress(min(self.done, self.total), self.total)
