"""The one place that opens images: from a path or bytes to an upright RGB PIL image, or a clear ImageError."""

from __future__ import annotations

import importlib.util
import io
import os
import stat
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from .image_limits import LIMITS, REDUCIBLE_MODES, encode_crop_box, frame_bytes, ico_frames, reduce_factor

#: HEIC/HEIF support is optional (pip install pillow-heif); its opener is registered when the first HEIF file is
#: seen, so that a start-up (and every other image) does not pay for importing it
HEIF_SUPPORTED = importlib.util.find_spec("pillow_heif") is not None
_heif_lock = threading.Lock()
_heif_registered = False


def _register_heif() -> None:
    """Register pillow-heif's opener with Pillow (once)."""
    global _heif_registered
    with _heif_lock:
        if not _heif_registered:
            import pillow_heif  # type: ignore[import-not-found]

            pillow_heif.register_heif_opener()
            _heif_registered = True

#: Images with more pixels than this are refused before decoding (decompression-bomb guard).
#: 120 megapixels: far above any camera photo (a 4000 x 3000 photo is 12 MP), far below a bomb.
MAX_PIXELS = 120_000_000

#: Pillow format name -> file extension used for stored gallery files.
FORMAT_EXTENSIONS = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
    "HEIF": ".heic",
    "AVIF": ".avif",
    "ICO": ".ico",
    "PPM": ".ppm",
    "TGA": ".tga",
}

#: Extensions the index manager treats as images when it walks a folder.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif",
     ".ppm", ".tga", ".ico"}
)

_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"heim", b"heis")

Source = Union[str, Path, bytes, bytearray]


class ImageError(ValueError):
    """An image that cannot be used; the message names the file and says why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason

    def __reduce__(self) -> tuple:
        # keeps the error intact across processes (DataLoader workers re-raise what they pickle)
        return (type(self), (self.name, self.reason))


def read_bytes(source: Source, name: str | None = None, max_bytes: int | None = None) -> tuple[bytes, str]:
    """Return (bytes, display name) of a path or a bytes object; ImageError if the file cannot be read, is not a
    regular file (a FIFO, device or socket is never read: it could block or never end) or is over max_bytes."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), name or "uploaded image"
    path = Path(source)
    label = name or str(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # opening a FIFO must not wait for a writer
    except FileNotFoundError:
        raise ImageError(label, "file not found") from None
    except IsADirectoryError:
        raise ImageError(label, "is a folder, not an image file") from None
    except OSError as exc:
        raise ImageError(label, f"cannot be read ({exc.strerror or exc})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ImageError(label, "is a folder, not an image file")
        raise ImageError(label, f"is not a regular file ({special_kind(info.st_mode)}); only image files are read")
    with os.fdopen(fd, "rb") as handle:
        if max_bytes is not None and info.st_size > max_bytes:
            raise ImageError(label, f"{info.st_size:,} bytes is over the size limit of {max_bytes:,} bytes")
        try:
            data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
        except OSError as exc:
            raise ImageError(label, f"cannot be read ({exc.strerror or exc})") from None
    if max_bytes is not None and len(data) > max_bytes:  # grew while being read
        raise ImageError(label, f"more than the size limit of {max_bytes:,} bytes")
    return data, label


def special_kind(mode: int) -> str:
    """'a FIFO (named pipe)', 'a character device', ... for a file mode that is not a regular file."""
    for test, text in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return text
    return "not a regular file"


def is_heif(data: bytes) -> bool:
    """True when the bytes look like an HEIC/HEIF container (ISO BMFF 'ftyp' box with a HEIF brand)."""
    return len(data) >= 12 and data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS


def open_image(source: Source, name: str | None = None, max_pixels: int = MAX_PIXELS,
               min_side: int | None = None) -> Image.Image:
    """Decode a path or bytes into an upright RGB image (EXIF applied, alpha on white, first frame)."""
    data, label = read_bytes(source, name)
    return decode_image(data, label, max_pixels=max_pixels, min_side=min_side)


def decode_image(data: bytes, name: str = "image", max_pixels: int = MAX_PIXELS,
                 min_side: int | None = None, fit_side: int | None = None) -> Image.Image:
    """Decode image bytes into an upright 8-bit RGB image; raise ImageError naming `name` on any failure.

    min_side (for encoding, not for display): a JPEG is decoded at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT
    scaling, several times faster for camera photos) as long as its shorter side stays at least min_side pixels;
    then the image is cropped to the centre region CLIP's preprocessing sees and box-reduced to a shorter side under
    2 * min_side (image_limits.py), so no input makes a large intermediate. fit_side (for thumbnails): the same
    reduced decoding and reduction, by the longer side, down to no less than fit_side pixels; nothing is cropped.
    The decode reserves its memory from the process-wide decode budget (image_limits.LIMITS) while it runs.
    """
    image = _open(data, name, max_pixels, load=False, min_side=min_side, fit_side=fit_side)
    with LIMITS.budget.reserve(2 * frame_bytes(image.size, image.mode)), _decode_errors(name):
        image.load()
        _check_loaded(image, name, max_pixels)
        orientation = _orientation(image)
        if min_side:
            image = _bound(image, min_side, crop=True)
        elif fit_side:
            image = _bound(image, fit_side, crop=False)
        if orientation is not None:
            image = image.transpose(orientation)
        return to_rgb(image)


def _orientation(image: Image.Image) -> Image.Transpose | None:
    """The transpose that makes the image upright from its EXIF orientation (None: upright or unreadable EXIF)."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # a damaged EXIF block must not make a good picture unusable
        return None
    return _TRANSPOSE.get(value)


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def _bound(image: Image.Image, side: int, crop: bool) -> Image.Image:
    """Crop to the centre region encoding uses (crop=True), then box-reduce while the bounding side stays >= side."""
    if crop:
        box = encode_crop_box(image.size)
        if box is not None:
            image = image.crop(box)
    factor = reduce_factor(min(image.size) if crop else max(image.size), side)
    if factor > 1:
        if image.mode not in REDUCIBLE_MODES:  # palette, 1-bit, 16-bit grey: first into a mode that averages
            image = _wide_to_l(image) if image.mode.startswith("I;16") else image.convert(
                "RGBA" if image.mode in ("P", "PA") else "L")
        image = image.reduce(factor)
    return image


@contextmanager
def _decode_errors(name: str) -> Iterator[None]:
    """Turn Pillow's errors while decoding into an ImageError naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own caps decide
            yield
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(name, "not an image, or an image format that cannot be read") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(name, f"too many pixels, refused as a possible decompression bomb ({exc})") from None
    except MemoryError:
        raise ImageError(name, "not enough memory to decode this image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower():
            raise ImageError(name, "the image file is truncated (incomplete download or copy)") from None
        raise ImageError(name, f"image data is damaged ({reason})") from None


def _check_size(image_size: tuple[int, int], mode: str, name: str, max_pixels: int, memory: bool = True) -> None:
    width, height = image_size
    if width * height > max_pixels:
        raise ImageError(name, f"{width} x {height} pixels is over the limit of {max_pixels:,} pixels (possible "
                         "decompression bomb)")
    if width < 1 or height < 1:
        raise ImageError(name, f"invalid size {width} x {height}")
    if not memory:
        return
    need = frame_bytes(image_size, mode)
    if need > LIMITS.max_decode_bytes:
        raise ImageError(name, f"{width} x {height} pixels ({mode}) would need {need / 2**20:,.0f} MB of memory to "
                         f"decode, over the limit of {LIMITS.max_decode_bytes / 2**20:,.0f} MB (a JPEG is decoded "
                         "at a reduced scale: save very large images as JPEG, or make them smaller)")


def _check_loaded(image: Image.Image, name: str, max_pixels: int) -> None:
    """A format whose header understated the frame: the decoded size is checked too."""
    _check_size(image.size, image.mode, name, max_pixels)


def image_extension(data: bytes, name: str = "image") -> str:
    """The gallery file extension (e.g. '.jpg') for these image bytes, from their real format, not the name."""
    image = _open(data, name, MAX_PIXELS, load=False, check_memory=False)
    return FORMAT_EXTENSIONS.get(image.format or "", ".img")


def draft_size(size: tuple[int, int], min_side: int) -> tuple[int, int] | None:
    """The size to ask Image.draft for so that the shorter side stays >= min_side; None when no 2x reduction fits."""
    width, height = size
    shorter = min(width, height)
    if min_side < 1 or shorter < 2 * min_side:
        return None
    return -(-width * min_side // shorter), -(-height * min_side // shorter)  # exact integer ceil


def _open(data: bytes, name: str, max_pixels: int, load: bool = True, min_side: int | None = None,
          fit_side: int | None = None, check_memory: bool = True) -> Image.Image:
    """Open (and unless load=False decode) the first frame after the size, memory and container checks."""
    if not data:
        raise ImageError(name, "the file is empty (0 bytes)")
    if is_heif(data):
        if not HEIF_SUPPORTED:
            raise ImageError(name, "HEIC/HEIF images need the optional package pillow-heif (pip install pillow-heif)")
        _register_heif()
    for declared, real in ico_frames(data):  # Pillow decodes an ICO's frame inside Image.open: check it first
        if real[0] * real[1] > declared[0] * declared[1]:
            raise ImageError(name, f"the icon says {declared[0]} x {declared[1]} pixels but holds a {real[0]} x "
                             f"{real[1]} image; refused")
    with _decode_errors(name):
        image = Image.open(io.BytesIO(data))
        _check_size(image.size, image.mode, name, max_pixels, memory=False)  # JPEGs: memory after the draft
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)  # first frame of an animation
        target = _draft_target(image.size, min_side, fit_side) if image.format in ("JPEG", "MPO") else None
        if target is not None:
            image.draft(image.mode, target)  # reduced-scale JPEG decoding; the pixel cap above saw the full size
        _check_size(image.size, image.mode, name, max_pixels, memory=check_memory)  # the draft's mode and size
        if load:
            with LIMITS.budget.reserve(frame_bytes(image.size, image.mode)):
                image.load()
            _check_loaded(image, name, max_pixels)
        return image


def _draft_target(size: tuple[int, int], min_side: int | None, fit_side: int | None) -> tuple[int, int] | None:
    if min_side:
        return draft_size(size, min_side)
    longer = max(size)
    if fit_side and longer >= 2 * fit_side:
        return -(-size[0] * fit_side // longer), -(-size[1] * fit_side // longer)  # exact integer ceil
    return None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode (palette, CMYK, 16-bit, grey, alpha) to 8-bit RGB; alpha goes onto white."""
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = _wide_to_l(image)
        mode = "L"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _wide_to_l(image: Image.Image) -> Image.Image:
    """Scale a 16/32-bit or float greyscale image to 8 bits (by its bit depth, not by clipping), in row blocks so
    the float intermediate stays small."""
    array = np.asarray(image)
    if image.mode == "F":
        top = float(np.nanmax(array)) if array.size else 1.0
        scale = 255.0 if top <= 1.0 else (255.0 / 65535.0 if top > 255.0 else 1.0)
    else:
        scale = 255.0 / 65535.0 if float(array.max(initial=0)) > 255.0 or image.mode.startswith("I;16") else 1.0
    out = np.empty(array.shape, dtype=np.uint8)
    step = max(1, (1 << 22) // max(1, array.shape[1] if array.ndim > 1 else 1))  # about 4 M values a block
    for start in range(0, array.shape[0], step):
        block = array[start:start + step].astype(np.float32) * np.float32(scale) + np.float32(0.5)
        out[start:start + step] = np.clip(np.nan_to_num(block, nan=0.0), 0, 255).astype(np.uint8)
    return Image.fromarray(out, mode="L")
