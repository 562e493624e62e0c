"""Memory bounds for decoding images (used by images.py): what a decode may cost, how many run at once, and how an
image is reduced before CLIP's preprocessing.

Rules (docs/reliability.md, "Memory bounds"):
- A frame whose decoded pixels would need more than ``max_decode_bytes`` (default 400 MB: a 100-megapixel RGB
  photo) is refused before it is decoded. JPEGs are measured at the reduced scale they are decoded at (draft), so
  a large camera JPEG is far below the limit.
- Container formats whose header can lie (ICO) are checked against the real size of the frame they hold.
- Decodes in flight together reserve their estimated bytes from one budget (``decode_budget_bytes``, default 1 GB):
  a request whose decode does not fit waits for others to finish (four parallel 100 MP uploads decode two at a time).
- For encoding, an image is reduced *before* CLIP's preprocessing: first cropped to the central region that
  preprocessing looks at anyway (its centre square, plus a margin: aspect ratio at most MAX_ENCODE_ASPECT), then
  box-reduced (Image.reduce) so its shorter side stays below twice the decode minimum. CLIP's own preprocessing
  scales the shorter side to the input size and keeps the centre square, so the crop changes nothing it would
  see; a 20000 x 1 strip becomes its central 2 x 1 pixels instead of a 4,480,000 x 224 intermediate.
"""

from __future__ import annotations

import os
import struct
import threading
from contextlib import contextmanager
from typing import Iterator

#: one decoded frame may need at most this many bytes (Pillow's in-memory size; RGB is stored as 4 bytes a pixel)
DEFAULT_MAX_DECODE_BYTES = 400 * 1024 * 1024
#: all decodes in flight together may reserve at most this many bytes; more wait
DEFAULT_DECODE_BUDGET_BYTES = 1024 * 1024 * 1024
#: before encoding, the image is cropped to its centre with at most this long/short side ratio
MAX_ENCODE_ASPECT = 2.0
ENV_MAX_DECODE = "CLIP_APP_MAX_DECODE_MEMORY"
ENV_DECODE_BUDGET = "CLIP_APP_DECODE_BUDGET"

#: bytes per pixel of Pillow's in-memory modes (a pixel of RGB, RGBA, CMYK, YCbCr, I, F takes 4 bytes)
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}


def mode_bytes(mode: str) -> int:
    """Bytes per pixel Pillow allocates for an image of this mode."""
    return _MODE_BYTES.get(mode, 4)


def frame_bytes(size: tuple[int, int], mode: str) -> int:
    """Bytes a decoded frame of this size and mode occupies."""
    return int(size[0]) * int(size[1]) * mode_bytes(mode)


def _env_bytes(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    from .config import parse_size  # the one parser of '400MB'-style sizes

    return parse_size(raw, name)


class DecodeBudget:
    """A byte-weighted semaphore: reserve(n) waits until n bytes fit beside the decodes in flight."""

    def __init__(self, total: int) -> None:
        self.total = int(total)
        self.in_use = 0
        self.peak = 0  # the most bytes reserved at once (for tests and benchmarks)
        self._cond = threading.Condition()

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Hold nbytes of the budget for the duration (a request larger than the whole budget takes all of it)."""
        need = min(max(0, int(nbytes)), self.total)
        with self._cond:
            self._cond.wait_for(lambda: self.in_use + need <= self.total)
            self.in_use += need
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= need
                self._cond.notify_all()


class Limits:
    """The process-wide decode limits (set from the environment; configure() changes them)."""

    def __init__(self) -> None:
        self.max_decode_bytes = _env_bytes(ENV_MAX_DECODE, DEFAULT_MAX_DECODE_BYTES)
        self.budget = DecodeBudget(_env_bytes(ENV_DECODE_BUDGET, DEFAULT_DECODE_BUDGET_BYTES))


LIMITS = Limits()


def configure(max_decode_bytes: int | None = None, decode_budget_bytes: int | None = None) -> None:
    """Change the per-frame limit and the concurrent-decode budget (bytes)."""
    if max_decode_bytes is not None:
        LIMITS.max_decode_bytes = int(max_decode_bytes)
    if decode_budget_bytes is not None:
        LIMITS.budget = DecodeBudget(int(decode_budget_bytes))


def ico_frames(data: bytes) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(declared size, real size) of each frame of an ICO file, read from its directory and from each embedded PNG's
    or BMP's own header (nothing is decoded); [] for any other format. Pillow decodes an ICO's largest frame as soon
    as it opens the file, so this check has to come before Image.open."""
    if data[:4] != b"\x00\x00\x01\x00" or len(data) < 6:
        return []
    frames = []
    count = struct.unpack("<H", data[4:6])[0]
    for index in range(count):
        entry = data[6 + 16 * index:22 + 16 * index]
        if len(entry) < 16:
            break
        declared = (entry[0] or 256, entry[1] or 256)
        offset = struct.unpack("<I", entry[12:16])[0]
        head = data[offset:offset + 32]
        if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
            real = struct.unpack(">II", head[16:24])
        elif len(head) >= 12:
            width, height = struct.unpack("<ii", head[4:12])
            real = (abs(width), abs(height) // 2)  # a BMP frame's height counts its AND mask too
        else:
            continue
        frames.append((declared, (int(real[0]), int(real[1]))))
    return frames


def encode_crop_box(size: tuple[int, int], max_aspect: float = MAX_ENCODE_ASPECT) -> tuple[int, int, int, int] | None:
    """The centred box (left, top, right, bottom) with long/short side ratio <= max_aspect; None when the image
    already fits."""
    width, height = size
    short = min(width, height)
    limit = max(1, int(short * max_aspect))
    if width > limit:
        left = (width - limit) // 2
        return left, 0, left + limit, height
    if height > limit:
        top = (height - limit) // 2
        return 0, top, width, top + limit
    return None


def reduce_factor(side: int, min_side: int) -> int:
    """The integer box-reduction factor that keeps `side` >= min_side (1: no reduction)."""
    if min_side < 1:
        return 1
    return max(1, int(side) // int(min_side))


#: modes Image.reduce averages directly
REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "RGBa", "La", "I", "F", "CMYK", "RGBX", "YCbCr"})
