"""Reduced-scale JPEG decoding for encoding (images.decode_image min_side): much faster for camera photos, and the
features stay the same."""

import pytest
from clip.clip import _transform

from clip_app.bench.perf.setup import jpeg_bytes, photo_like
from clip_app.images import ImageError, decode_image, draft_size, open_image
from tests.support.image_files import encode, jpeg_with_orientation, quadrants


@pytest.fixture(scope="module")
def photo_jpeg() -> bytes:
    return jpeg_bytes(photo_like(1600, 1200, seed=3))


def test_draft_size_keeps_the_shorter_side():
    assert draft_size((4000, 3000), 448) == (598, 448)
    assert draft_size((3000, 4000), 448) == (448, 598)
    assert draft_size((800, 600), 448) is None  # no 2x reduction fits
    assert draft_size((500, 375), 224) is None


def test_large_jpeg_is_decoded_at_a_reduced_scale(photo_jpeg):
    full = decode_image(photo_jpeg)
    small = decode_image(photo_jpeg, min_side=224)
    assert full.size == (1600, 1200)
    assert small.size == (400, 300)  # 1/4: the largest DCT scale whose shorter side stays >= 224
    assert small.mode == "RGB"


def test_reduced_decode_preprocesses_to_nearly_the_same_pixels(photo_jpeg):
    preprocess = _transform(224)
    full = preprocess(decode_image(photo_jpeg))
    small = preprocess(decode_image(photo_jpeg, min_side=448))
    assert (full - small).abs().mean() < 0.01  # normalised units (about 1/400 of the range)


def test_reduced_decode_gives_the_same_features(tiny_encoder, photo_jpeg):
    assert tiny_encoder.decode_min_side == 2 * tiny_encoder.input_resolution
    full = tiny_encoder.encode_images([decode_image(photo_jpeg)])
    small = tiny_encoder.encode_images([decode_image(photo_jpeg, min_side=tiny_encoder.decode_min_side)])
    assert decode_image(photo_jpeg, min_side=tiny_encoder.decode_min_side).size[1] < 1200
    assert float((full * small).sum()) > 0.999


def test_reduced_decode_keeps_exif_rotation():
    upright = quadrants(960, 480)
    data = jpeg_with_orientation(upright, 6)
    image = open_image(data, min_side=100)
    assert image.size == (240, 120)  # upright landscape, at 1/4
    assert image.getpixel((10, 10))[0] > 200 and image.getpixel((10, 10))[1] < 60  # red quadrant top-left


def test_other_formats_are_box_reduced_after_decoding_and_small_jpegs_are_untouched(photo_jpeg):
    png = encode(photo_like(600, 400, seed=1), "PNG")
    assert decode_image(png).size == (600, 400)
    assert decode_image(png, min_side=50).size == (75, 50)  # Image.reduce(8): shorter side in [50, 100)
    small_jpeg = jpeg_bytes(photo_like(500, 375, seed=2))
    assert decode_image(small_jpeg, min_side=224).size == (500, 375)


def test_pixel_cap_still_sees_the_full_size(photo_jpeg):
    with pytest.raises(ImageError, match="over the limit"):
        decode_image(photo_jpeg, max_pixels=1_000_000, min_side=100)
