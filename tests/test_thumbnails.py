"""Thumbnails (issue 12): small, upright, alpha on white, kept beside the gallery, made on add or first view, removed
with their image, pruned and remade by repair; a link out of the gallery is never read for display."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from PIL import Image

from clip_app.bench.perf.setup import jpeg_bytes, photo_like
from clip_app.images import ImageError
from clip_app.thumbnails import THUMB_SIDE, Thumbnails, make_thumbnail, thumbs_dir
from tests.support.app_helpers import make_app, write_png
from tests.support.image_files import jpeg_with_orientation, quadrants


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_a_camera_photo_becomes_a_small_upright_thumbnail() -> None:
    photo = jpeg_bytes(photo_like(4000, 3000, seed=1))
    thumb = opened(make_thumbnail(photo))
    assert thumb.format == "WEBP" and thumb.size == (THUMB_SIDE, 288)
    assert len(make_thumbnail(photo)) < len(photo) / 20
    rotated = opened(make_thumbnail(jpeg_with_orientation(quadrants(960, 480), 6)))
    assert rotated.size == (384, 192)  # EXIF orientation applied: upright landscape
    red = rotated.convert("RGB").getpixel((20, 20))
    assert red[0] > 180 and red[1] < 80  # the red quadrant is top-left, as in the upright picture


def test_alpha_goes_onto_white_and_small_images_are_not_enlarged() -> None:
    clear = Image.new("RGBA", (50, 40), (255, 0, 0, 0))
    buffer = io.BytesIO()
    clear.save(buffer, format="PNG")
    thumb = opened(make_thumbnail(buffer.getvalue())).convert("RGB")
    assert thumb.size == (50, 40) and min(thumb.getpixel((10, 10))) > 245


def test_thumbnails_live_beside_the_gallery_and_follow_their_images(tmp_path: Path, colour_encoder) -> None:
    app = make_app(tmp_path, colour_encoder, ("red", "green", "blue"))
    gallery = app.library.gallery_dir
    folder = thumbs_dir(gallery)
    assert folder == gallery.parent / "gallery.thumbs" and not folder.is_relative_to(gallery)
    entries = list(app.library)
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{e.sha256}.webp" for e in entries)  # made on add
    page = app.gallery_page(1)
    assert page.thumbnails == [app.thumbnails.path_of(e.sha256) for e in entries] and not page.problems
    removed = app.delete_image(entries[1].id)
    assert not app.thumbnails.path_of(removed.sha256).exists()  # removed with its image
    app.thumbnails.path_of(entries[0].sha256).unlink()  # lost: made again on first view
    (folder / f"{'0' * 64}.webp").write_bytes(b"orphan")
    assert app.search_text("a red thing", 1).hits[0].thumbnail == app.thumbnails.path_of(entries[0].sha256)
    assert app.thumbnails.path_of(entries[0].sha256).is_file()
    app.thumbnails.path_of(entries[2].sha256).unlink()
    report = app.repair()
    assert "removed 1 thumbnails of images no longer in the library" in report.actions
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{e.sha256}.webp" for e in app.library)
    assert app.check().ok  # the thumbnails folder is not in the gallery: nothing to report


def test_a_link_out_of_the_gallery_is_never_read_for_display(tmp_path: Path) -> None:
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    secret = write_png(tmp_path / "private" / "secret.png", "yellow")
    os.symlink(secret, gallery / "000009.png")
    thumbs = Thumbnails(gallery)
    digest = hashlib.sha256(secret.read_bytes()).hexdigest()
    with pytest.raises(ImageError, match="link to a file outside the gallery"):
        thumbs.ensure(digest, gallery / "000009.png", "000009.png")
    assert not thumbs.path_of(digest).exists()
