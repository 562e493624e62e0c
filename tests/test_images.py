"""clip_app.images: every awkward image becomes an upright RGB image, or a clear ImageError naming the file."""

import numpy as np
import pytest
from PIL import Image

from clip_app import images
from clip_app.images import ImageError, decode_image, image_extension, open_image
from tests.support.image_files import (
    animated_gif,
    encode,
    heic_header,
    jpeg_with_orientation,
    minimal_pdf,
    png_bomb,
    quadrants,
)


def pixel(image, x, y):
    return np.asarray(image)[y, x].astype(int)


def close(a, b, tol=40):
    return bool(np.all(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)) <= tol))


def test_plain_rgb_roundtrip(tmp_path):
    path = tmp_path / "photo.png"
    quadrants().save(path)
    image = open_image(path)
    assert image.mode == "RGB" and image.size == (64, 32)
    assert close(pixel(image, 5, 5), (255, 0, 0), 0)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    image = decode_image(jpeg_with_orientation(quadrants(), orientation), "rotated.jpg")
    assert image.size == (64, 32)
    for (x, y), colour in zip([(8, 8), (56, 8), (8, 24), (56, 24)],
                              [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]):
        assert close(pixel(image, x, y), colour), (orientation, x, y, pixel(image, x, y))


def test_zero_bytes(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty.jpg: the file is empty \(0 bytes\)"):
        open_image(path)


def test_text_renamed_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello, this is not a picture\n")
    with pytest.raises(ImageError, match="notes.jpg: not an image"):
        open_image(path)


def test_pdf_renamed_jpg():
    with pytest.raises(ImageError, match="doc.jpg: not an image"):
        decode_image(minimal_pdf(), "doc.jpg")


def test_truncated_jpeg():
    data = encode(Image.effect_noise((256, 256), 50).convert("RGB"), "JPEG", quality=90)
    with pytest.raises(ImageError, match="cut.jpg: the image file is truncated"):
        decode_image(data[: len(data) // 2], "cut.jpg")


def test_decompression_bomb_is_refused_before_decoding():
    expected = r"bomb.png: too many pixels, refused as a possible decompression bomb \(Image size \(900000000 pixels"
    with pytest.raises(ImageError, match=expected):
        decode_image(png_bomb(), "bomb.png")


def test_pixel_cap_applies_below_pillows_own_limit():
    with pytest.raises(ImageError, match=r"big.png: 12000 x 11000 pixels is over the limit of 120,000,000 pixels"):
        decode_image(png_bomb(12000, 11000), "big.png")


def test_pixel_cap_is_configurable():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageError, match="over the limit of 9,999 pixels"):
        decode_image(data, "x.png", max_pixels=9_999)
    assert decode_image(data, "x.png", max_pixels=10_000).size == (100, 100)


def test_cmyk_jpeg():
    data = encode(Image.new("CMYK", (20, 10), (0, 255, 255, 0)), "JPEG", quality=95)  # red in CMYK
    image = decode_image(data, "cmyk.jpg")
    assert image.mode == "RGB"
    assert close(pixel(image, 10, 5), (255, 0, 0))


def test_16_bit_greyscale_png_is_scaled_not_clipped():
    array = np.full((8, 8), 32768, dtype=np.uint16)  # mid grey in 16 bits
    data = encode(Image.fromarray(array), "PNG")
    assert Image.open(__import__("io").BytesIO(data)).mode.startswith("I")
    image = decode_image(data, "deep.png")
    assert image.mode == "RGB"
    assert close(pixel(image, 3, 3), (128, 128, 128), 2)


def test_palette_png_with_transparency_goes_on_white():
    palette_image = Image.new("P", (10, 10), 0)
    palette_image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette_image.paste(1, (0, 0, 5, 10))  # left half red, right half index 0 (transparent black)
    data = encode(palette_image, "PNG", transparency=0)
    image = decode_image(data, "palette.png")
    assert close(pixel(image, 2, 5), (255, 0, 0), 0)
    assert close(pixel(image, 8, 5), (255, 255, 255), 0)


@pytest.mark.parametrize("mode,fill", [("RGBA", (0, 0, 255, 0)), ("LA", (0, 0))])
def test_transparent_pixels_become_white(mode, fill):
    base = Image.new(mode, (10, 10), fill)
    data = encode(base, "PNG")
    image = decode_image(data, "alpha.png")
    assert image.mode == "RGB"
    assert close(pixel(image, 5, 5), (255, 255, 255), 0)


def test_half_transparent_rgba_is_blended():
    data = encode(Image.new("RGBA", (4, 4), (0, 0, 0, 128)), "PNG")
    assert close(pixel(decode_image(data, "a.png"), 1, 1), (127, 127, 127), 2)


def test_animated_gif_gives_its_first_frame():
    image = decode_image(animated_gif(), "anim.gif")
    assert image.mode == "RGB" and close(pixel(image, 8, 8), (255, 0, 0), 8)


def test_webp():
    image = decode_image(encode(Image.new("RGB", (12, 12), (0, 200, 0)), "WEBP", lossless=True), "x.webp")
    assert close(pixel(image, 6, 6), (0, 200, 0), 0)


def test_greyscale_and_bilevel():
    for mode, value in [("L", 77), ("1", 1)]:
        image = decode_image(encode(Image.new(mode, (6, 6), value), "PNG"), "g.png")
        assert image.mode == "RGB"
        expected = 77 if mode == "L" else 255
        assert close(pixel(image, 1, 1), (expected,) * 3, 0)


def test_one_pixel_image():
    image = decode_image(encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"), "dot.png")
    assert image.size == (1, 1)


def test_heic_without_pillow_heif_says_how_to_enable(monkeypatch):
    monkeypatch.setattr(images, "HEIF_SUPPORTED", False)
    with pytest.raises(ImageError, match="IMG_0001.HEIC: .*pip install pillow-heif"):
        decode_image(heic_header(), "IMG_0001.HEIC")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError, match="gone.jpg: file not found"):
        open_image(tmp_path / "gone.jpg")
    with pytest.raises(ImageError, match="is a folder"):
        open_image(tmp_path)


def test_bytes_source_uses_the_given_name():
    with pytest.raises(ImageError, match="^upload.png: "):
        open_image(b"garbage", name="upload.png")


def test_image_extension_follows_the_real_format():
    assert image_extension(encode(Image.new("RGB", (4, 4)), "PNG"), "looks.jpg") == ".png"
    assert image_extension(encode(Image.new("RGB", (4, 4)), "JPEG")) == ".jpg"
    assert image_extension(animated_gif()) == ".gif"
    with pytest.raises(ImageError):
        image_extension(b"nope", "nope.png")


def test_image_error_is_a_value_error_with_parts():
    err = ImageError("a.jpg", "broken")
    assert isinstance(err, ValueError) and err.name == "a.jpg" and err.reason == "broken"


def test_image_error_survives_pickling():
    import pickle

    copy = pickle.loads(pickle.dumps(ImageError("b.jpg", "truncated")))
    assert isinstance(copy, ImageError) and str(copy) == "b.jpg: truncated" and copy.name == "b.jpg"
