"""The committed demo gallery: real photographs with credits, named so that the first run adopts them as they are."""

from __future__ import annotations

import shutil
from pathlib import Path

from clip_app.images import image_extension
from clip_app.library.gallery import is_ignored, parse_id_name
from tests.support.library_helpers import open_library

GALLERY = Path(__file__).resolve().parents[2] / "gallery"


def _images() -> list[Path]:
    return sorted(p for p in GALLERY.iterdir() if not is_ignored(p.name))


def test_the_demo_gallery_holds_12_to_20_credited_images_named_by_id() -> None:
    images = _images()
    assert 12 <= len(images) <= 20
    assert sum(p.stat().st_size for p in images) < 5_000_000
    credits = (GALLERY / "CREDITS.md").read_text(encoding="utf-8")
    for path in images:
        assert parse_id_name(path.name) is not None, path.name
        assert path.suffix == image_extension(path.read_bytes(), path.name)  # the real format, as add() names it
        row = next(line for line in credits.splitlines() if line.startswith(f"| {path.name} |"))
        assert "Public domain" in row or "CC0" in row or "No known copyright restrictions" in row
    assert [parse_id_name(p.name) for p in images] == list(range(1, len(images) + 1))


def test_the_first_run_indexes_the_demo_gallery_without_renaming(tmp_path: Path, colour_encoder) -> None:
    shutil.copytree(GALLERY, tmp_path / "gallery")
    before = {p.name: p.read_bytes() for p in (tmp_path / "gallery").iterdir()}
    library = open_library(tmp_path, colour_encoder)
    images = _images()
    assert [(e.id, e.file) for e in library] == [(parse_id_name(p.name), p.name) for p in images]
    assert {p.name: p.read_bytes() for p in (tmp_path / "gallery").iterdir()} == before  # nothing renamed or changed
    assert library.first_run_report is not None
    assert not any("renamed" in action for action in library.first_run_report.actions)
    assert library.check().ok
    assert len(library) == len(images) and library.stats()["next_id"] == len(images) + 1
