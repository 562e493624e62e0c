"""The one place that opens images: from a path or bytes to an upright RGB PIL image, or a clear ImageError."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # HEIC/HEIF support is optional: pip install pillow-heif
    import pillow_heif  # type: ignore[import-not-found]

    pillow_heif.register_heif_opener()
    HEIF_SUPPORTED = True
except ImportError:  # pragma: no cover - depends on the environment
    HEIF_SUPPORTED = False

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


def read_bytes(source: Source, name: str | None = None) -> tuple[bytes, str]:
    """Return (bytes, display name) of a path or a bytes object; ImageError if the file cannot be read."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), name or "uploaded image"
    path = Path(source)
    label = name or str(path)
    try:
        return path.read_bytes(), label
    except FileNotFoundError:
        raise ImageError(label, "file not found") from None
    except IsADirectoryError:
        raise ImageError(label, "is a folder, not an image file") from None
    except OSError as exc:
        raise ImageError(label, f"cannot be read ({exc.strerror or exc})") from None


def is_heif(data: bytes) -> bool:
    """True when the bytes look like an HEIC/HEIF container (ISO BMFF 'ftyp' box with a HEIF brand)."""
    return len(data) >= 12 and data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS


def open_image(source: Source, name: str | None = None, max_pixels: int = MAX_PIXELS,
               min_side: int | None = None) -> Image.Image:
    """Decode a path or bytes into an upright RGB image (EXIF applied, alpha on white, first frame)."""
    data, label = read_bytes(source, name)
    return decode_image(data, label, max_pixels=max_pixels, min_side=min_side)


def decode_image(data: bytes, name: str = "image", max_pixels: int = MAX_PIXELS,
                 min_side: int | None = None) -> Image.Image:
    """Decode image bytes into an upright 8-bit RGB image; raise ImageError naming `name` on any failure.

    min_side (for encoding, not for display): a JPEG is decoded at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT
    scaling, several times faster for camera photos) as long as its shorter side stays at least min_side pixels.
    """
    image = _open(data, name, max_pixels, min_side=min_side)
    try:
        try:
            image = ImageOps.exif_transpose(image) or image
        except Exception:  # a damaged EXIF block must not make a good picture unusable
            pass
        return to_rgb(image)
    except OSError as exc:
        raise ImageError(name, f"image data is damaged ({exc})") from None


def image_extension(data: bytes, name: str = "image") -> str:
    """The gallery file extension (e.g. '.jpg') for these image bytes, from their real format, not the name."""
    image = _open(data, name, MAX_PIXELS, load=False)
    return FORMAT_EXTENSIONS.get(image.format or "", ".img")


def draft_size(size: tuple[int, int], min_side: int) -> tuple[int, int] | None:
    """The size to ask Image.draft for so that the shorter side stays >= min_side; None when no 2x reduction fits."""
    width, height = size
    shorter = min(width, height)
    if min_side < 1 or shorter < 2 * min_side:
        return None
    return -(-width * min_side // shorter), -(-height * min_side // shorter)  # exact integer ceil


def _open(data: bytes, name: str, max_pixels: int, load: bool = True, min_side: int | None = None) -> Image.Image:
    if not data:
        raise ImageError(name, "the file is empty (0 bytes)")
    if is_heif(data) and not HEIF_SUPPORTED:
        raise ImageError(name, "HEIC/HEIF images need the optional package pillow-heif (pip install pillow-heif)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap below decides
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    name, f"{width} x {height} pixels is over the limit of {max_pixels:,} pixels (possible "
                    "decompression bomb)")
            if width < 1 or height < 1:
                raise ImageError(name, f"invalid size {width} x {height}")
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)  # first frame of an animation
            target = draft_size(image.size, min_side) if min_side and image.format in ("JPEG", "MPO") else None
            if target is not None:
                image.draft(image.mode, target)  # reduced-scale JPEG decoding; the pixel cap above saw the full size
            if load:
                image.load()
            return image
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(name, "not an image, or an image format that cannot be read") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(name, f"too many pixels, refused as a possible decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower():
            raise ImageError(name, "the image file is truncated (incomplete download or copy)") from None
        raise ImageError(name, f"image data is damaged ({reason})") from None


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
    """Scale a 16/32-bit or float greyscale image to 8 bits (by its bit depth, not by clipping)."""
    array = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = float(array.max()) if array.size else 1.0
        scale = 255.0 if top <= 1.0 else (255.0 / 65535.0 if top > 255.0 else 1.0)
    else:
        scale = 255.0 / 65535.0 if float(array.max(initial=0)) > 255.0 or image.mode.startswith("I;16") else 1.0
    return Image.fromarray(np.clip(array * scale + 0.5, 0, 255).astype(np.uint8), mode="L")
