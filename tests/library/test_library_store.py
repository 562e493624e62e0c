"""The on-disk layout: main file + journal of recent changes, compaction, stale and corrupt journals; and the
in-memory state's shared append buffers."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import clip_app.library.store as store
from clip_app.library import LibraryCorruptError
from clip_app.library.state import LibraryState
from tests.support.fakes import COLOUR_NAMES
from tests.support.library_helpers import image_bytes, open_library

LIB = "features_library.pth"
JOURNAL = "features_library.pth.journal"


def test_small_changes_go_to_the_journal_and_every_reader_sees_them(tmp_path: Path, colour_encoder) -> None:
    library = open_library(tmp_path, colour_encoder)
    library.add([(image_bytes(c), c) for c in COLOUR_NAMES[:3]])  # a new library: written whole
    main = (tmp_path / LIB).read_bytes()
    assert not (tmp_path / JOURNAL).exists()
    library.add([(image_bytes("yellow"), "y")])
    library.remove([2])
    assert (tmp_path / LIB).read_bytes() == main  # the 110 MB main file of a big library is not rewritten
    journal = torch.load(tmp_path / JOURNAL, weights_only=True)
    generation = torch.load(tmp_path / LIB, weights_only=True)["generation"]
    assert journal["kind"] == "journal" and journal["base"] == generation
    assert journal["ids"].tolist() == [4] and journal["removed"].tolist() == [2] and journal["next_id"] == 5
    fresh = open_library(tmp_path, colour_encoder)
    assert [e.id for e in fresh] == [1, 3, 4] and torch.equal(fresh.snapshot()[1], library.snapshot()[1])
    assert fresh.get(4).name == "y" and fresh.check().ok
    stats = fresh.stats()
    assert stats["file_size"] == len(main) + (tmp_path / JOURNAL).stat().st_size and stats["journal_size"] > 0


def test_a_big_journal_is_compacted_into_a_new_main_file(tmp_path: Path, colour_encoder, monkeypatch) -> None:
    monkeypatch.setattr(store, "COMPACT_MIN_ROWS", 2)
    library = open_library(tmp_path, colour_encoder)
    library.add([(image_bytes("red"), "r")])
    first = torch.load(tmp_path / LIB, weights_only=True)["generation"]
    library.add([(image_bytes("green"), "g")])
    library.add([(image_bytes("blue"), "b")])
    assert (tmp_path / JOURNAL).exists()
    library.add([(image_bytes("cyan"), "c")])  # the third journal entry: over the limit
    assert not (tmp_path / JOURNAL).exists()
    raw = torch.load(tmp_path / LIB, weights_only=True)
    assert raw["ids"].tolist() == [1, 2, 3, 4] and raw["generation"] != first
    assert [e.id for e in open_library(tmp_path, colour_encoder)] == [1, 2, 3, 4]


def test_a_stale_journal_is_ignored(tmp_path: Path, colour_encoder, caplog) -> None:
    library = open_library(tmp_path, colour_encoder)
    library.add([(image_bytes("red"), "r")])
    library.add([(image_bytes("green"), "g")])
    old_journal = (tmp_path / JOURNAL).read_bytes()
    library.repair()  # nothing to repair: no write
    with library.store.writing() as state:
        library.store.save(state, compact=True)  # what a compaction does (repair, rebuild, a big journal)
    assert not (tmp_path / JOURNAL).exists()
    (tmp_path / JOURNAL).write_bytes(old_journal)  # a crash between replacing the main file and deleting it
    with caplog.at_level(logging.WARNING):
        again = open_library(tmp_path, colour_encoder)  # applied, it would add ID 2 a second time
    assert [e.id for e in again] == [1, 2] and "stale journal" in caplog.text
    again.remove([2])  # the next write replaces the stale journal
    assert [e.id for e in open_library(tmp_path, colour_encoder)] == [1]


def test_a_corrupt_journal_is_reported_and_both_files_kept(tmp_path: Path, colour_encoder) -> None:
    library = open_library(tmp_path, colour_encoder)
    library.add([(image_bytes("red"), "r")])
    library.add([(image_bytes("green"), "g")])
    journal = tmp_path / JOURNAL
    journal.write_bytes(journal.read_bytes()[:100])
    main, damaged = (tmp_path / LIB).read_bytes(), journal.read_bytes()
    with pytest.raises(LibraryCorruptError, match="journal"):
        open_library(tmp_path, colour_encoder)
    with pytest.raises(LibraryCorruptError):
        library.add([(image_bytes("blue"), "b")])  # a live instance refuses to write over it too
    assert (tmp_path / LIB).read_bytes() == main and journal.read_bytes() == damaged


def test_appending_shares_buffers_without_changing_older_states() -> None:
    state = LibraryState.empty("m", "m", 4)
    one = state.appended([1], torch.tensor([[1.0, 0, 0, 0]]), ["000001.png"], ["a" * 64], [10], ["a"])
    before = one.features16.clone()
    view = one.features16
    two = one.appended([2], torch.tensor([[0, 1.0, 0, 0]]), ["000002.png"], ["b" * 64], [10], ["b"])
    assert torch.equal(view, before) and len(two) == 2 and two.features16.data_ptr() == one.features16.data_ptr()
    # a second branch from `one` (as after a failed save of `two`) must not overwrite two's rows
    other = one.appended([3], torch.tensor([[0, 0, 1.0, 0]]), ["000003.png"], ["c" * 64], [10], ["c"])
    assert two.features[1].tolist() == [0, 1.0, 0, 0] and other.features[1].tolist() == [0, 0, 1.0, 0]
    saved = two.to_dict()["features"]
    assert saved.untyped_storage().nbytes() == 2 * 4 * 2  # only the rows, not the spare capacity


def test_sorted_member_matches_a_set_lookup() -> None:
    values = torch.tensor([1, 3, 4, 9, 12, 15], dtype=torch.int64)
    known = torch.tensor([2, 3, 9, 10, 15], dtype=torch.int64)
    assert store.sorted_member(values, known).tolist() == [v in {2, 3, 9, 10, 15} for v in values.tolist()]
    assert store.sorted_member(values, torch.empty(0, dtype=torch.int64)).tolist() == [False] * 6


def test_an_empty_library_of_another_model_is_taken_over_with_a_whole_new_file(tmp_path: Path,
                                                                                colour_encoder) -> None:
    from tests.support.library_helpers import other_colour_encoder

    library = open_library(tmp_path, colour_encoder)
    library.add([(image_bytes("red"), "r")])
    library.remove([1])
    other = open_library(tmp_path, other_colour_encoder())  # nothing to mix: the empty library is taken over
    assert other.add([(image_bytes("blue"), "b")]).results[0].id == 2
    raw = torch.load(tmp_path / LIB, weights_only=True)
    assert raw["model"] == "other-colour-model" and raw["ids"].tolist() == [2]
    assert [e.id for e in open_library(tmp_path, other_colour_encoder())] == [2]


def test_a_damaged_journal_says_how_to_recover_and_repair_brings_its_images_back_under_their_ids(
        tmp_path: Path, colour_encoder) -> None:
    library = open_library(tmp_path, colour_encoder)
    library.add([(image_bytes("red"), "red.png"), (image_bytes("green"), "green.png")])  # the main file: IDs 1, 2
    library.remove([2])
    library.add([(image_bytes("blue"), "blue.png")])  # in the journal: ID 3, and the removal of ID 2
    library.add([(image_bytes("cyan"), "cyan.png"), (image_bytes("grey"), "grey.png")])  # IDs 4, 5
    before = {e.id: (e.file, e.sha256) for e in library}
    journal = tmp_path / JOURNAL
    journal.write_bytes(journal.read_bytes()[:200])
    with pytest.raises(LibraryCorruptError) as info:
        open_library(tmp_path, colour_encoder)
    message = str(info.value)
    assert "journal" in message and "python -m clip_app.index repair" in message and "keep their IDs" in message
    assert "restart" not in message

    journal.rename(tmp_path / "journal.damaged")  # what the message says to do
    moved_away = open_library(tmp_path, colour_encoder)
    assert [e.id for e in moved_away] == [1, 2]  # the main file alone
    report = moved_away.repair()
    assert report.indexed == [3, 4, 5] and report.dropped == [2]
    assert {e.id: (e.file, e.sha256) for e in moved_away} == before and moved_away.check().ok
    assert moved_away.add([(image_bytes("black"), "black.png")]).results[0].id == 6


def _columns(state: LibraryState) -> list[tuple]:
    """Every row as a tuple of all its columns, in row order."""
    return [(int(state.ids[r]), state.files[r], state.sha256[r], state.names[r], float(state.added[r]),
             int(state.sizes[r]), tuple(state.features16[r].tolist()), tuple(state.features[r].tolist()))
            for r in range(len(state))]


@pytest.mark.parametrize("removed", [[1], [1000], [2, 3, 500, 999], list(range(1, 1001, 3))])
def test_without_keeps_every_column_aligned(removed: list[int]) -> None:
    n = 1000
    generator = torch.Generator().manual_seed(3)
    rows = torch.nn.functional.normalize(torch.randn(n, 8, generator=generator), dim=1)
    ids = list(range(1, n + 1))
    state = LibraryState.empty("m", "m", 8).appended(
        ids, rows, [f"{i:06d}.png" for i in ids], [f"{i:064x}" for i in ids], [10 * i for i in ids],
        [f"photo {i}.png" for i in ids], added=[float(i) for i in ids])
    before = _columns(state)
    smaller = state.without(removed + removed[:1])  # an ID given twice counts once
    gone = set(removed)
    assert _columns(smaller) == [row for row in before if row[0] not in gone]
    assert smaller.next_id == n + 1 and _columns(state) == before  # the original state is unchanged
    assert smaller.row_of == {row[0]: k for k, row in enumerate(_columns(smaller))}
    assert all(smaller.id_of_hash[row[2]] == row[0] for row in _columns(smaller))
    grown = smaller.appended([n + 5], rows[:1], ["001005.png"], ["f" * 64], [1], ["new.png"])
    assert _columns(grown)[:-1] == _columns(smaller) and _columns(state) == before  # appending shares nothing back
    reverse = state.reordered(torch.arange(n - 1, -1, -1))
    assert _columns(reverse) == before[::-1]


def test_appending_shares_the_columns_but_every_state_keeps_its_own_rows() -> None:
    """An append grows the newest state's feature buffer in place; an older state appended to again (another
    branch) gets its own, and neither sees the other's rows, IDs, names or hashes."""
    rows = torch.nn.functional.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(1)), dim=1)

    def grow(state: LibraryState, image_id: int, digest: str) -> LibraryState:
        return state.appended([image_id], rows[image_id - 1:image_id], [f"{image_id}.png"], [digest], [image_id],
                              [f"n{image_id}"], added=float(image_id))

    base = LibraryState.empty("m", "m", 8)
    for i in (1, 2, 3):
        base = grow(base, i, f"{i:064x}")
    assert base.row_of[3] == 2 and base.id_of_hash[f"{1:064x}"] == 1  # the lookups exist before the appends
    before = _columns(base)
    tip = grow(grow(base, 4, f"{4:064x}"), 5, f"{1:064x}")  # 5 repeats 1's bytes: the first ID keeps them
    branch = grow(base, 6, f"{6:064x}")
    assert _columns(base) == before and len(base.files) == 3 and list(base.names) == ["n1", "n2", "n3"]
    assert 4 not in base.row_of and base.id_of_hash.get(f"{4:064x}") is None and base.files[-1] == "3.png"
    assert [r[0] for r in _columns(tip)] == [1, 2, 3, 4, 5] and tip.id_of_hash[f"{1:064x}"] == 1
    assert [r[0] for r in _columns(branch)] == [1, 2, 3, 6] and 4 not in branch.row_of and 6 not in tip.row_of
    assert branch.id_of_hash.get(f"{4:064x}") is None and branch.id_of_hash[f"{6:064x}"] == 6
    assert dict(tip.id_of_hash.items()) == {f"{i:064x}": i for i in (1, 2, 3, 4)} and len(tip.row_of) == 5
    assert tip.files == ["1.png", "2.png", "3.png", "4.png", "5.png"] and tip.files.count("5.png") == 1
    saved = tip.to_dict()
    assert saved["features"].untyped_storage().nbytes() == 5 * 8 * 2  # no spare room of the shared buffer is saved
    assert torch.equal(saved["features"], tip.features16) and torch.equal(branch.features16[3], rows[5].half())
    assert saved["ids"].tolist() == [1, 2, 3, 4, 5] and saved["added"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
