"""FeatureLibrary.check / repair / rebuild on libraries damaged each way check() knows."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from clip_app.library import FeatureLibrary, LibraryWriteError, ModelMismatchError
from tests.support.fakes import solid_image
from tests.support.library_helpers import image_bytes, open_library, other_colour_encoder, write_image

LIB = "features_library.pth"


def _library_with(tmp_path: Path, encoder, colours=("red", "green", "blue")) -> FeatureLibrary:
    library = open_library(tmp_path, encoder)
    library.add([(image_bytes(c), f"{c}.png") for c in colours])
    return library


def _edit_file(path: Path, change) -> None:
    raw = torch.load(path, weights_only=True)
    change(raw)
    torch.save(raw, path)


def test_a_healthy_library_checks_ok(tmp_path: Path, colour_encoder) -> None:
    library = _library_with(tmp_path, colour_encoder)
    (tmp_path / "gallery" / "README.md").write_text("about these photos")
    (tmp_path / "gallery" / "CREDITS.md").write_text("credits")
    (tmp_path / "gallery" / ".DS_Store").write_bytes(b"x")
    report = library.check()
    assert report.ok and report.checked_rows == 3 and report.summary().startswith("ok")
    assert library.repair().actions == []


def test_a_row_without_its_file_is_found_and_dropped(tmp_path: Path, colour_encoder) -> None:
    library = _library_with(tmp_path, colour_encoder)
    (tmp_path / "gallery" / "000002.png").unlink()
    problems = library.check().problems
    assert [(p.kind, p.id, p.file) for p in problems] == [("missing_file", 2, "000002.png")]
    report = library.repair()
    assert report.dropped == [2] and "000002.png is gone" in report.actions[0]
    assert [e.id for e in library] == [1, 3] and library.check().ok
    assert library.add([(image_bytes("yellow"), "y")]).results[0].id == 4  # 2 is not given again


def test_a_file_without_a_row_is_indexed_under_its_never_issued_id(tmp_path: Path, colour_encoder) -> None:
    library = _library_with(tmp_path, colour_encoder)
    orphan = write_image(tmp_path / "gallery" / "000004.png", "yellow").read_bytes()  # a crash before the save
    problems = library.check().problems
    assert [(p.kind, p.id, p.file) for p in problems] == [("orphan_file", 4, "000004.png")]
    report = library.repair()
    assert report.indexed == [4] and (tmp_path / "gallery" / "000004.png").read_bytes() == orphan
    assert library.check().ok
    assert library.add([(image_bytes("cyan"), "c")]).results[0].id == 5


def test_an_orphan_with_a_removed_id_gets_a_new_id(tmp_path: Path, colour_encoder) -> None:
    library = _library_with(tmp_path, colour_encoder)
    kept = (tmp_path / "gallery" / "000002.png").read_bytes()
    (tmp_path / "gallery" / "000002.png").rename(tmp_path / "keep.bin")
    library.remove([2])  # (a crash after the row went, before the file went, leaves the file behind)
    (tmp_path / "keep.bin").rename(tmp_path / "gallery" / "000002.png")
    report = library.repair()
    assert report.indexed == [4] and "renamed to 000004.png" in report.actions[0]
    assert (tmp_path / "gallery" / "000004.png").read_bytes() == kept
    assert not (tmp_path / "gallery" / "000002.png").exists() and library.check().ok


def test_a_changed_file_is_found_and_re_encoded(tmp_path: Path, colour_encoder) -> None:
    library = _library_with(tmp_path, colour_encoder)
    (tmp_path / "gallery" / "000001.png").write_bytes(image_bytes("purple"))
    problems = library.check().problems
    assert [(p.kind, p.id) for p in problems] == [("hash_mismatch", 1)]
    assert library.check(hashes=False).ok  # a quick check does not read the files
    assert library.repair().reencoded == [1]
    assert library.check().ok
    expected = colour_encoder.encode_images([solid_image("purple", (24, 20))])[0]
    assert torch.allclose(library.snapshot()[1][0], expected, atol=2e-3)


def test_a_row_that_is_not_unit_length_is_found_and_re_encoded(tmp_path: Path, colour_encoder) -> None:
    library = _library_with(tmp_path, colour_encoder)
    good = library.snapshot()[1][2].clone()

    def scale(raw: dict) -> None:
        raw["features"][2] *= 3
    _edit_file(tmp_path / LIB, scale)
    problems = library.check().problems
    assert [(p.kind, p.id) for p in problems] == [("not_unit", 3)]
    assert library.repair().reencoded == [3]
    assert library.check().ok and torch.allclose(library.snapshot()[1][2], good, atol=2e-3)


def test_foreign_files_are_indexed_or_set_aside_never_deleted(tmp_path: Path, colour_encoder) -> None:
    library = _library_with(tmp_path, colour_encoder)
    gallery = tmp_path / "gallery"
    holiday = write_image(gallery / "holiday.JPG", "orange", "JPEG").read_bytes()
    (gallery / "notes.txt").write_text("mine")
    (gallery / "sub").mkdir()
    (gallery / "broken.png").write_bytes(b"\x89PNG not really")
    (gallery / "again.png").write_bytes(image_bytes("red"))  # the same bytes as ID 1
    found = {(p.kind, p.file) for p in library.check().problems}
    assert found == {("foreign_file", n) for n in ("holiday.JPG", "notes.txt", "sub", "broken.png", "again.png")}
    report = library.repair()
    assert report.indexed == [4] and (gallery / "000004.jpg").read_bytes() == holiday
    assert sorted(os.listdir(gallery / ".quarantine")) == ["again.png", "broken.png", "notes.txt", "sub"]
    assert (gallery / ".quarantine" / "notes.txt").read_text() == "mine"
    assert library.check().ok


def test_model_stamp_mismatch_is_reported_and_rebuild_fixes_it(tmp_path: Path, colour_encoder) -> None:
    _library_with(tmp_path, colour_encoder)
    other = other_colour_encoder()
    library = FeatureLibrary.open_for_rebuild(tmp_path / "gallery", tmp_path / LIB, other)
    problems = library.check().problems
    assert [p.kind for p in problems] == ["model_mismatch"] and "rebuild" in problems[0].detail
    with pytest.raises(ModelMismatchError):
        library.repair()
    added_before = [e.added for e in library]
    report = library.rebuild()
    assert report.previous_model == "color-test" and report.model == "other-colour-model"
    assert report.reencoded == [1, 2, 3] and report.count == 3
    assert torch.load(tmp_path / LIB, weights_only=True)["model"] == "other-colour-model"
    assert library.check().ok and [e.added for e in library] == added_before
    assert open_library(tmp_path, other).add([(image_bytes("cyan"), "c")]).results[0].id == 4


def test_rebuild_drops_rows_without_files_and_indexes_orphans(tmp_path: Path, colour_encoder) -> None:
    _library_with(tmp_path, colour_encoder)
    (tmp_path / "gallery" / "000003.png").unlink()
    write_image(tmp_path / "gallery" / "000009.png", "white")
    library = FeatureLibrary.open_for_rebuild(tmp_path / "gallery", tmp_path / LIB, other_colour_encoder())
    report = library.rebuild()
    assert report.dropped == [3] and report.indexed == [9] and [e.id for e in library] == [1, 2, 9]
    assert library.check().ok


def test_a_failed_rebuild_keeps_the_old_library(tmp_path: Path, colour_encoder, monkeypatch) -> None:
    _library_with(tmp_path, colour_encoder)
    before = (tmp_path / LIB).read_bytes()
    library = FeatureLibrary.open_for_rebuild(tmp_path / "gallery", tmp_path / LIB, other_colour_encoder())

    def failing_replace(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(LibraryWriteError):
        library.rebuild()
    assert (tmp_path / LIB).read_bytes() == before
    assert torch.load(tmp_path / LIB, weights_only=True)["model"] == "color-test"
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


def test_add_skips_an_id_whose_file_already_lies_in_the_gallery(tmp_path: Path, colour_encoder) -> None:
    library = _library_with(tmp_path, colour_encoder)
    stray = write_image(tmp_path / "gallery" / "000004.jpg", "black", "JPEG").read_bytes()
    assert library.add([(image_bytes("cyan"), "c")]).results[0].id == 5
    assert (tmp_path / "gallery" / "000004.jpg").read_bytes() == stray  # never overwritten
    assert library.repair().indexed == [6]  # 4 was passed over, so it is not reused


def test_repair_reports_progress_over_every_file_it_reads(tmp_path: Path, colour_encoder) -> None:
    library = _library_with(tmp_path, colour_encoder)
    write_image(tmp_path / "gallery" / "holiday.png", "cyan")
    write_image(tmp_path / "gallery" / "000099.png", "yellow")
    seen: list[tuple[int, int]] = []
    report = library.repair(progress=lambda done, total: seen.append((done, total)))
    assert seen == [(k, 5) for k in range(1, 6)]  # 3 rows + 2 files without rows
    assert sorted(report.indexed) == [99, 100]  # 000099.png keeps its never-issued ID; holiday.png comes after it


def test_only_exact_documentation_names_are_ignored_never_images(tmp_path: Path, colour_encoder) -> None:
    from clip_app.library.gallery import is_ignored

    for name in ("README", "README.md", "readme.txt", "LICENSE", "License.txt", "LICENCE.md", "CREDITS.md",
                 "COPYING", "Thumbs.db", "desktop.ini", ".DS_Store"):
        assert is_ignored(name), name
    for name in ("license_plate.jpg", "readme_cat.jpg", "Licensed.png", "credits-roll.png", "README.md.jpg"):
        assert not is_ignored(name), name
    library = _library_with(tmp_path, colour_encoder, ("red",))
    gallery = tmp_path / "gallery"
    write_image(gallery / "license_plate.jpg", "yellow", "JPEG")
    write_image(gallery / "readme_cat.png", "cyan")
    (gallery / "README.md").write_text("my photos")
    (gallery / "LICENSE").write_text("CC-BY")
    assert {p.file for p in library.check().problems} == {"license_plate.jpg", "readme_cat.png"}
    report = library.repair()
    assert len(report.indexed) == 2 and len(library) == 3 and library.check().ok
    assert (gallery / "README.md").is_file() and (gallery / "LICENSE").is_file()
