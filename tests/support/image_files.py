"""Image files with every awkward property, made in tests (bytes in memory)."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

# The inverse of the transform that EXIF orientation N asks a viewer to apply.
_INVERSE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def quadrants(width: int = 64, height: int = 32) -> Image.Image:
    """An upright image with four differently coloured quadrants (so any rotation or flip is visible)."""
    image = Image.new("RGB", (width, height))
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    for index, colour in enumerate(colours):
        x, y = (index % 2) * width // 2, (index // 2) * height // 2
        image.paste(colour, (x, y, x + width // 2, y + height // 2))
    return image


def jpeg_with_orientation(upright: Image.Image, orientation: int) -> bytes:
    """JPEG bytes whose pixels are stored so that applying EXIF `orientation` shows `upright`."""
    stored = upright if _INVERSE[orientation] is None else upright.transpose(_INVERSE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's signature)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def animated_gif(colours=((255, 0, 0), (0, 0, 255), (0, 255, 0))) -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in colours]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def minimal_pdf() -> bytes:
    return (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n2 0 obj << /Type /Pages /Kids [] "
            b"/Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")


def heic_header() -> bytes:
    """The start of an HEIC file (ISO BMFF ftyp box, brand heic): enough to be recognised."""
    return struct.pack(">I", 24) + b"ftypheic" + b"\0\0\0\0" + b"mif1heic" + b"\0" * 64
