"""Memory bounds of decoding (issue 12, defect 1): tiny files that made giant intermediates, lying ICO headers,
decodes over the memory limit, and the budget that bounds decodes in flight. Sizes are asserted, not timings."""

from __future__ import annotations

import struct
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_app import image_limits
from clip_app.image_limits import DecodeBudget, encode_crop_box
from clip_app.images import ImageError, decode_image
from tests.support.app_helpers import make_app
from tests.support.image_files import encode


@pytest.fixture()
def limits():
    """Restore the process-wide limits after a test changes them."""
    saved = (image_limits.LIMITS.max_decode_bytes, image_limits.LIMITS.budget)
    yield image_limits.LIMITS
    image_limits.LIMITS.max_decode_bytes, image_limits.LIMITS.budget = saved


def strip_png(width: int, height: int) -> bytes:
    return encode(Image.new("RGB", (width, height), (200, 30, 30)), "PNG")


class SizeGuard:
    """Wraps an encoder's preprocess: records each image size and refuses (instead of allocating) a big one."""

    def __init__(self, encoder, max_pixels: int = 4_000_000) -> None:
        self.encoder, self.inner, self.max_pixels, self.sizes = encoder, encoder.preprocess, max_pixels, []

    def __call__(self, image: Image.Image):
        self.sizes.append(image.size)
        scale = 224 / min(image.size)  # CLIP's Resize: the shorter side to the input size
        intermediate = round(image.size[0] * scale) * round(image.size[1] * scale)
        assert intermediate <= self.max_pixels, f"{image.size} would make a {intermediate:,}-pixel intermediate"
        return self.inner(image)

    def __enter__(self) -> "SizeGuard":
        self.encoder.preprocess = self
        return self

    def __exit__(self, *exc: object) -> None:
        self.encoder.preprocess = self.inner


def test_a_long_strip_is_cropped_to_what_clip_sees(tmp_path: Path, colour_encoder) -> None:
    app = make_app(tmp_path, colour_encoder, ("red", "green"))
    data = strip_png(20000, 1)
    assert len(data) < 1000
    assert decode_image(data, min_side=colour_encoder.decode_min_side).size == (2, 1)
    path = tmp_path / "strip.png"
    path.write_bytes(data)
    with SizeGuard(colour_encoder) as guard:  # on the old code: a 4,480,000 x 224 intermediate, refused here
        assert app.classify(str(path), "red, green", save=True).scores[0].label == "red"
        app.search_image(str(path), 1)
        assert app.add_images([path]).results[0].status == "duplicate"
        app.rebuild()
    assert guard.sizes and all(max(s) <= 2 * min(s) for s in guard.sizes), guard.sizes
    tall = decode_image(strip_png(3, 9000), min_side=448)
    assert tall.size == (3, 6)


def test_large_images_are_reduced_before_preprocessing(tiny_encoder) -> None:
    big = encode(Image.new("RGB", (2400, 1800), (10, 200, 10)), "PNG")
    image = decode_image(big, min_side=tiny_encoder.decode_min_side)
    side = tiny_encoder.decode_min_side
    assert side <= min(image.size) < 2 * side and abs(image.size[0] / image.size[1] - 4 / 3) < 0.02


def test_the_crop_changes_nothing_clip_would_see(tiny_encoder) -> None:
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 255, (100, 500, 3), dtype=np.uint8)).resize((1500, 300))
    data = encode(wide, "PNG")
    bounded = decode_image(data, min_side=300)  # no reduction at this size: the crop alone
    assert bounded.size == (600, 300)  # the centre 2:1 region (CLIP keeps the centre 300 x 300 square)
    full = tiny_encoder.encode_images([decode_image(data)])
    cropped = tiny_encoder.encode_images([bounded])
    assert float((full * cropped).sum()) > 0.999
    assert encode_crop_box((1500, 300)) == (450, 0, 1050, 300) and encode_crop_box((600, 300)) is None


def ico_holding(png: bytes, declared: int = 0) -> bytes:
    """An ICO whose directory says declared x declared (0 means 256) but whose one frame is the given PNG."""
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", declared, declared, 0, 0, 1, 32, len(png), 6 + 16)
    return header + entry + png


def test_an_icon_that_understates_its_frame_is_refused_before_decoding() -> None:
    inner = encode(Image.new("L", (3000, 3000), 0), "PNG")
    data = ico_holding(inner)
    assert data[6] == 0  # the directory says 256 x 256 (Pillow itself decodes the frame while opening the file)
    with pytest.raises(ImageError, match=r"says 256 x 256 pixels but holds a 3000 x 3000 image"):
        decode_image(data)
    honest = ico_holding(encode(Image.new("RGB", (256, 256), (0, 0, 255)), "PNG"))
    assert decode_image(honest).getpixel((5, 5)) == (0, 0, 255)


def test_a_frame_over_the_memory_limit_is_refused_before_decoding_but_a_big_jpeg_is_drafted(limits) -> None:
    png = encode(Image.new("RGB", (1000, 1000), (1, 2, 3)), "PNG")  # 4 MB in memory (RGB takes 4 bytes a pixel)
    jpeg = encode(Image.new("RGB", (2000, 2000), (1, 2, 3)), "JPEG")  # 16 MB at full size, 0.25 MB at 1/8
    image_limits.configure(max_decode_bytes=2 << 20)
    with pytest.raises(ImageError, match=r"1000 x 1000 pixels \(RGB\) would need 4 MB of memory to decode, over "
                                         r"the limit of 2 MB"):
        decode_image(png, min_side=224)
    with pytest.raises(ImageError, match="would need 15 MB"):
        decode_image(jpeg)  # full size
    assert decode_image(jpeg, min_side=224).size == (250, 250)  # decoded at 1/8: within the limit


def test_a_float_image_is_reduced_before_it_is_widened() -> None:
    array = np.linspace(0, 1, 1000 * 1000, dtype=np.float32).reshape(1000, 1000)
    data = encode(Image.fromarray(array, mode="F"), "TIFF")
    tracemalloc.start()
    try:
        image = decode_image(data, min_side=100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.mode == "RGB" and image.size == (100, 100)
    assert peak < 1_000_000, peak  # the old code made float64 copies of the whole image (8 MB each)


def test_the_decode_budget_bounds_decodes_in_flight(limits) -> None:
    budget = DecodeBudget(1000)
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def first() -> None:
        with budget.reserve(600):
            inside.set()
            release.wait(10)
            order.append("first done")

    def second() -> None:
        inside.wait(10)
        with budget.reserve(600):  # does not fit beside the first: waits
            order.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    inside.wait(10)
    release.set()
    for t in threads:
        t.join(10)
    assert order == ["first done", "second in"] and budget.peak == 600 and budget.in_use == 0
    with budget.reserve(5000):  # more than the whole budget: takes all of it, does not wait forever
        assert budget.in_use == 1000
    png = encode(Image.new("RGB", (500, 500), (1, 2, 3)), "PNG")  # 1 MB in memory, 2 MB reserved
    image_limits.configure(decode_budget_bytes=3 << 20)
    workers = [threading.Thread(target=decode_image, args=(png,)) for _ in range(6)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(30)
    assert 0 < image_limits.LIMITS.budget.peak <= 3 << 20
