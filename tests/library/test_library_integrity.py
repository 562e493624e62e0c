"""Invariants on load and bad gallery entries (issue 12, defects 4 and 5): a journal that makes two rows share a
file or bytes is refused with the recovery advice; no file another row names is ever deleted; a link out of the
gallery or a folder in place of a file is reported by check, never indexed by repair, and does not break a page or a
search; check reports a library whose feature width is not the model's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from clip_app.library import FeatureLibrary, LibraryCorruptError
from clip_app.library import state as state_module
from clip_app.library.fileformat import save_state
from clip_app.library.state import LibraryState
from clip_app.service import App
from clip_app.ui import page_items, search_items
from tests.support.fakes import COLOUR_NAMES
from tests.support.library_helpers import image_bytes, open_library, write_image
from tests.support.reliability_helpers import folder_state

LIB = "features_library.pth"
JOURNAL = LIB + ".journal"


def damaged_journal(root: Path, encoder, column: str) -> FeatureLibrary:
    """A library of 3 rows in its main file and a journal adding #4 whose file name or hash is #1's."""
    library = open_library(root, encoder)
    library.add([(image_bytes(c), c) for c in COLOUR_NAMES[:3]])
    library.add([(image_bytes("yellow"), "y")])  # into the journal
    journal = torch.load(root / JOURNAL, weights_only=True)
    first = library.get(1)
    if column == "files":
        journal["files"] = first.file
    else:
        journal["sha256"] = torch.tensor(list(bytes.fromhex(first.sha256)), dtype=torch.uint8).reshape(1, 32)
    torch.save(journal, root / JOURNAL)
    return library


@pytest.mark.parametrize("column, words", [("files", "one file name (000001.png): IDs 1 and 4"),
                                           ("sha256", "one content hash (sha256)")])
def test_a_journal_that_breaks_an_invariant_is_refused(tmp_path: Path, colour_encoder, column: str,
                                                       words: str) -> None:
    damaged_journal(tmp_path, colour_encoder, column)
    before = folder_state(tmp_path)
    with pytest.raises(LibraryCorruptError) as info:
        open_library(tmp_path, colour_encoder)
    message = str(info.value)
    assert "does not fit" in message and words in message, message
    assert "Move the journal away, then run `python -m clip_app.index repair`" in message
    assert folder_state(tmp_path) == before  # left untouched


def test_a_main_file_with_two_rows_of_the_same_bytes_is_refused(tmp_path: Path, colour_encoder) -> None:
    library = open_library(tmp_path, colour_encoder)
    library.add([(image_bytes(c), c) for c in COLOUR_NAMES[:2]])
    state = library.store.current()
    twin = LibraryState.build(state.model, state.model_name, state.dim, ids=state.ids, features=state.features16,
                              files=state.files, sha256=[state.sha256[0]] * 2, added=state.added, sizes=state.sizes,
                              names=state.names, next_id=state.next_id)
    save_state(twin, tmp_path / LIB, {"generation": "x"})
    with pytest.raises(LibraryCorruptError, match=r"two rows share one content hash \(sha256\) .*: IDs 1 and 2"):
        open_library(tmp_path, colour_encoder)


def test_remove_never_deletes_a_file_another_row_names(tmp_path: Path, colour_encoder, monkeypatch) -> None:
    damaged_journal(tmp_path, colour_encoder, "files")
    monkeypatch.setattr(state_module, "invariant_problem", lambda state: None)  # as the old loader let it in
    for module in ("clip_app.library.store", "clip_app.library.fileformat"):
        monkeypatch.setattr(f"{module}.invariant_problem", lambda state: None)
    library = open_library(tmp_path, colour_encoder)
    assert library.get(4).file == library.get(1).file == "000001.png"
    library.remove([4])
    assert (tmp_path / "gallery" / "000001.png").read_bytes() == image_bytes(COLOUR_NAMES[0])  # #1's image stays


@pytest.fixture()
def bad_entries(tmp_path: Path, colour_encoder) -> tuple[App, Path]:
    """An App over 4 images where #2's file became a link out of the gallery, #3's a folder, plus a link
    000009.png to an outside photo lying in the gallery."""
    app = App(colour_encoder, open_library(tmp_path, colour_encoder))
    app.add_images([write_image(tmp_path / "in" / f"{c}.png", c) for c in COLOUR_NAMES[:4]])
    gallery = tmp_path / "gallery"
    outside = write_image(tmp_path / "private" / "secret.png", "purple")
    (gallery / "000002.png").unlink()
    os.symlink(outside, gallery / "000002.png")
    (gallery / "000003.png").unlink()
    (gallery / "000003.png").mkdir()
    os.symlink(write_image(tmp_path / "private" / "holiday.png", "brown"), gallery / "000009.png")
    return app, tmp_path


def test_a_page_and_a_search_show_the_good_images_and_mark_the_bad_ones(bad_entries) -> None:
    app, root = bad_entries
    page = app.gallery_page(1)
    assert [e.id for e in page.entries] == [1, 2, 3, 4]
    assert set(page.problems) == {2, 3}
    assert "a symbolic link to a file outside the gallery" in page.problems[2]
    assert "is a folder" in page.problems[3]
    assert page.thumbnails[0] is not None and page.thumbnails[3] is not None
    items = page_items(page)
    assert [caption.split(" · ")[0] for _, caption in items] == ["#1", "#2", "#3", "#4"]
    assert "cannot be shown" in items[1][1] and "cannot be shown" not in items[0][1]
    assert all(str(root / "private") not in path for path, _ in items)  # nothing outside the gallery is shown
    result = app.search_text("a purple thing", 4)
    assert {h.entry.id for h in result.hits} == {1, 2, 3, 4}
    assert all((h.problem is None) == (h.entry.id in (1, 4)) for h in result.hits)
    assert len(search_items(result)) == 4


def test_check_reports_links_and_folders_and_repair_never_indexes_a_link(bad_entries) -> None:
    app, root = bad_entries
    outside = folder_state(root / "private")
    kinds = {(p.kind, p.file) for p in app.check().problems}
    assert {("link", "000002.png"), ("not_a_file", "000003.png"), ("link", "000009.png")} <= kinds
    report = app.repair()
    text = "\n".join(report.actions)
    assert "moved 000009.png to .quarantine/000009.png: a symbolic link to a file outside the gallery" in text
    assert "index add PATH" in text  # the rule, said where it applies
    assert "dropped the row of ID 2: its file 000002.png is a symbolic link" in text
    assert "dropped the row of ID 3: its file 000003.png is a folder" in text
    assert [e.id for e in app.library] == [1, 4] and app.check().ok
    assert folder_state(root / "private") == outside  # the files the links pointed to are untouched
    assert (root / "gallery" / ".quarantine" / "000009.png").is_symlink()


def test_check_reports_a_library_whose_width_is_not_the_models(tmp_path: Path, colour_encoder) -> None:
    library = open_library(tmp_path, colour_encoder)
    library.add([(image_bytes("red"), "red")])
    state = library.store.current()
    narrow = LibraryState.build(state.model, state.model_name, 8, ids=state.ids, features=state.features16[:, :8],
                                files=state.files, sha256=state.sha256, added=state.added, sizes=state.sizes,
                                names=state.names, next_id=state.next_id)
    save_state(narrow, tmp_path / LIB, {"generation": "y"})
    opened = FeatureLibrary.open_for_rebuild(tmp_path / "gallery", tmp_path / LIB, colour_encoder)
    problems = opened.check().problems
    assert [p.kind for p in problems][:1] == ["width_mismatch"]
    assert f"8-d features, but that model gives {colour_encoder.dim}-d features" in problems[0].detail
