"""The compact columns of the library state (columns.py, lookups.py) behave as the lists and dicts they replace:
rows read back as the same strings, lookups by ID, by hash and by file give the same answers,
appends/removals/reorders keep every column aligned, and files (the current and the older list form) load and save
the same bytes."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from clip_app.library import LibraryCorruptError
from clip_app.library.columns import HashColumn, TextColumn
from clip_app.library.fileformat import load_state, state_from_dict
from clip_app.library.lookups import HashIndex, RowIndex
from clip_app.library.state import LibraryState, _first_repeat, invariant_problem
from clip_app.library.store import load_library, save_library
from tests.support.fakes import COLOUR_NAMES
from tests.support.library_helpers import image_bytes, open_library

ODD = ["1.jpg", "11.jpg", "", "photo é.png", "猫.jpg", "bad \udcff name", "1.jpg.png", "x", "11.jpg"]


def _hex(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def test_a_text_column_reads_back_every_string_and_finds_whole_rows_only() -> None:
    column = TextColumn.of(ODD)
    assert len(column) == len(ODD) and list(column) == ODD and column == ODD and column.tolist() == ODD
    assert [column[i] for i in range(len(ODD))] == ODD and column[-1] == "11.jpg" and column[2:5] == ODD[2:5]
    assert column.joined() == "\n".join(ODD)
    for value in ODD + ["1", "jpg", ".jpg", "11.jpg\n1.jpg", "nothing", 7]:
        assert (value in column) == (value in ODD)
        assert column.count(value) == ODD.count(value)
        if value in ODD:
            assert column.index(value) == ODD.index(value)
    assert column.index("11.jpg", 2) == 8
    assert "" not in TextColumn.of(["a", "b"]) and TextColumn.of(["a", "", "b", ""]).count("") == 2
    with pytest.raises(ValueError):
        column.index("nothing")
    with pytest.raises(IndexError):
        column[len(ODD)]
    with pytest.raises(ValueError, match="line break"):
        TextColumn.of(["a\nb"])
    assert TextColumn.of([]) == [] and list(TextColumn.of([""])) == [""] and len(TextColumn.of([""])) == 1


def test_text_column_appends_and_takes_match_list_operations() -> None:
    rng = random.Random(5)
    items = [rng.choice(ODD) + str(rng.randrange(50)) for _ in range(300)]
    column = TextColumn.of(items[:200]).extended(items[200:])
    assert column == items and TextColumn.of(items[:200]) == items[:200]  # the original is unchanged
    assert column.extended([]) is column and TextColumn().extended(items) == items
    for index in ([0, 1, 2, 50, 51, 299], list(range(299, -1, -1)), [5, 5, 5], [], rng.sample(range(300), 120)):
        assert column.take(index) == [items[i] for i in index]
        assert column.take(torch.tensor(index, dtype=torch.int64)) == [items[i] for i in index]
    with pytest.raises(IndexError):
        column.take([300])


def test_a_hash_column_holds_bytes_and_reads_hex() -> None:
    hexes = [_hex(i) for i in range(20)]
    column = HashColumn.of(hexes)
    assert column.digests.shape == (20, 32) and column.digests.dtype == np.uint8
    assert list(column) == hexes and column[3] == hexes[3] and column[-1] == hexes[-1] and column == hexes
    assert column.digest(4) == bytes.fromhex(hexes[4]) and column.joined() == "\n".join(hexes)
    assert hexes[7] in column and _hex(99) not in column and "zz" not in column
    assert HashColumn.of([h.upper() for h in hexes]) == hexes
    assert column.take([3, 1]) == [hexes[3], hexes[1]] and column.extended([_hex(50)]) == hexes + [_hex(50)]
    assert column.replaced([2], [_hex(77)])[2] == _hex(77) and column[2] == hexes[2]
    tensor = column.tensor()
    assert tensor.dtype == torch.uint8 and tensor.data_ptr() == column.digests.ctypes.data  # shared, not copied
    for bad in (["ab"], ["g" * 64], ["  " + "a" * 62]):
        with pytest.raises(ValueError):
            HashColumn.of(bad)


@pytest.mark.parametrize("ids", [[1, 2, 5, 9, 10], [5, 2, 9], [4, 4, 7], [], [2**40, 2**41]])
def test_row_index_answers_as_the_dict_it_replaces(ids: list[int]) -> None:
    index = RowIndex(torch.tensor(ids, dtype=torch.int64))
    reference = dict(zip(ids, range(len(ids))))
    assert index == reference and dict(index.items()) == reference and len(index) == len(reference)
    for key in ids + [0, 3, -1, 2**70, 1.0, 2.5, "1", None]:
        expected = reference.get(key) if not isinstance(key, float) or key.is_integer() else None
        assert index.get(key) == expected and (key in index) == (expected is not None)
    assert index.rows(ids + [3]).tolist() == [reference[i] for i in ids] + [-1]
    with pytest.raises(KeyError):
        index[123456]


def _prefix_twins() -> list[bytes]:
    """Digests that share their first 8 bytes (the index's sort key) but differ afterwards."""
    return [bytes(8) + bytes([k]) * 24 for k in (3, 1, 2)]


def test_hash_index_finds_the_first_id_even_when_prefixes_collide() -> None:
    raws = [hashlib.sha256(bytes([k])).digest() for k in range(30)] + _prefix_twins()
    raws += [raws[4], _prefix_twins()[1]]  # the same bytes twice: the first (lowest) ID wins
    hexes = [r.hex() for r in raws]
    ids = torch.arange(10, 10 + len(raws), dtype=torch.int64)
    index = HashIndex(HashColumn.of(hexes).digests, ids)
    reference = dict(zip(reversed(hexes), reversed(ids.tolist())))
    assert dict(index.items()) == reference and index == reference and len(index) == len(reference)
    for key in hexes:
        assert index[key] == reference[key] and index.get(key.upper()) == reference[key]
    for missing in (_hex(1000), bytes(32).hex(), "xyz", "", None, "0" * 63 + "g"):
        assert index.get(missing) is None and missing not in index
    assert index.first_repeat() == _first_repeat(hexes) == (4, len(raws) - 2)
    assert HashIndex(HashColumn.of(hexes[:30]).digests, ids[:30]).first_repeat() is None


def test_hash_index_merges_appended_digests_as_a_fresh_one() -> None:
    hexes = [_hex(i) for i in range(200)] + [r.hex() for r in _prefix_twins()]
    ids = torch.arange(1, len(hexes) + 1)
    old = HashIndex(HashColumn.of(hexes[:120]).digests, ids[:120])
    more = hexes + [_hex(7)]  # a repeat of an old row: the old row keeps winning
    all_ids = torch.arange(1, len(more) + 1)
    merged = old.appended(HashColumn.of(more).digests, all_ids)
    fresh = HashIndex(HashColumn.of(more).digests, all_ids)
    assert dict(merged.items()) == dict(fresh.items()) and merged[_hex(7)] == 8
    assert all(merged[h] == fresh[h] for h in more)


def _reference(state: LibraryState) -> list[tuple]:
    return [(int(i), f, h, n, float(a), int(z)) for i, f, h, n, a, z in
            zip(state.ids.tolist(), list(state.files), list(state.sha256), list(state.names), state.added.tolist(),
                state.sizes.tolist())]


def _state(n: int) -> LibraryState:
    ids = list(range(1, n + 1))
    rows = torch.nn.functional.normalize(torch.randn(n, 8, generator=torch.Generator().manual_seed(n)), dim=1)
    return LibraryState.empty("m", "m", 8).appended(ids, rows, [f"{i:06d}.png" for i in ids], [_hex(i) for i in ids],
                                                    [i for i in ids], [f"IMG {i} é.png" for i in ids],
                                                    added=[float(i) for i in ids])


def test_state_changes_keep_the_compact_columns_aligned_and_lookups_current() -> None:
    state = _state(50)
    assert isinstance(state.files, TextColumn) and isinstance(state.sha256, HashColumn)
    rows = _reference(state)
    assert state.id_of_hash[_hex(7)] == 7  # built now, then merged by the append below
    grown = state.appended([60, 61], torch.ones(2, 8), ["000060.png", "000061.jpg"], [_hex(60), _hex(61)], [1, 2],
                           ["a\nb", ""], added=5.0)
    assert _reference(grown)[:50] == rows and _reference(grown)[50:] == [
        (60, "000060.png", _hex(60), "a b", 5.0, 1), (61, "000061.jpg", _hex(61), "image", 5.0, 2)]
    assert grown.id_of_hash[_hex(61)] == 61 and grown.id_of_hash[_hex(7)] == 7 and _hex(61) not in state.id_of_hash
    assert grown.row_of[61] == 51 and "000061.jpg" in grown.files and "000061.jpg" not in state.files
    smaller = grown.without([1, 7, 60])
    assert _reference(smaller) == [r for r in _reference(grown) if r[0] not in (1, 7, 60)]
    assert smaller.id_of_hash.get(_hex(7)) is None and smaller.row_of.get(7) is None and smaller.row_of[8] == 5
    assert smaller.files.count("000007.png") == 0 and smaller.files.index("000008.png") == 5
    unordered = state.appended([3000, 2000], torch.ones(2, 8), ["003000.png", "002000.png"], [_hex(3000), _hex(2000)],
                               [1, 1], ["x", "y"])  # IDs out of order: the state is sorted again
    assert unordered.ids.tolist()[-2:] == [2000, 3000] and unordered.files[-1] == "003000.png"
    assert unordered.id_of_hash[_hex(3000)] == 3000
    changed = state.with_rows([3], torch.ones(1, 8), [_hex(333)], [9])
    assert changed.sha256[2] == _hex(333) and changed.id_of_hash[_hex(333)] == 3 and _hex(3) not in changed.id_of_hash
    assert state.sha256[2] == _hex(3) and changed.files == state.files and changed.names == state.names
    assert invariant_problem(grown) is None
    twin = grown.appended([70], torch.ones(1, 8), ["000070.png"], [_hex(8)], [1], ["t"])
    assert invariant_problem(twin) == f"two rows share one content hash (sha256) ({_hex(8)}): IDs 8 and 70"


def test_a_library_file_round_trips_and_older_list_columns_still_load(tmp_path: Path) -> None:
    state = _state(40)
    path = tmp_path / "lib.pth"
    save_library(state, path, None, compact=True)
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw["files"], str) and raw["files"] == "\n".join(f"{i:06d}.png" for i in range(1, 41))
    assert raw["sha256"].shape == (40, 32) and raw["names"].split("\n")[0] == "IMG 1 é.png"
    assert raw["sha256"].untyped_storage().nbytes() == 40 * 32
    loaded = load_state(path)
    assert _reference(loaded) == _reference(state) and torch.equal(loaded.features16, state.features16)
    older = dict(raw, files=raw["files"].split("\n"), names=raw["names"].split("\n"),
                 sha256=[h.upper() for h in list(state.sha256)])  # the list form of earlier versions
    assert _reference(state_from_dict(older)) == _reference(state)
    again = tmp_path / "again.pth"
    save_library(load_state(path), again, None, compact=True)
    raw_again = torch.load(again, weights_only=True)
    assert all(raw_again[k] == raw[k] for k in ("files", "names")) and torch.equal(raw_again["sha256"], raw["sha256"])


@pytest.mark.parametrize("change, message", [
    ({"files": "a.png\nb.png"}, "'files' holds 2 entries for 3 rows"),
    ({"files": ["a.png", "b\n.png", "c.png"]}, "line break"),
    ({"files": "a.png\n.b.png\nc.png"}, "'.b.png' is not a plain file name"),
    ({"files": "a.png\n\nc.png"}, "'' is not a plain file name"),
    ({"files": "a.png\nx/b.png\nc.png"}, "'x/b.png' is not a plain file name"),
    ({"files": "a.png\nb.png\na.png"}, "two rows share one file name (a.png): IDs 1 and 3"),
    ({"ids": torch.tensor([1, 3, 1])}, "'ids' holds the same ID twice"),
    ({"sha256": ["ab"] * 3}, "'sha256' must be a uint8 tensor"),
    ({"sha256": ["z" * 64] * 3}, "'sha256' must be a uint8 tensor"),
])
def test_bad_text_and_hash_columns_are_refused_with_the_reason(tmp_path: Path, change: dict, message: str) -> None:
    raw = _state(3).to_dict()
    raw.update(files="a.png\nb.png\nc.png")
    assert len(state_from_dict(dict(raw)).files) == 3
    raw.update(change)
    path = tmp_path / "bad.pth"
    torch.save(raw, path)
    with pytest.raises(LibraryCorruptError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_state(path)


def test_the_library_finds_duplicates_and_files_after_a_reload(tmp_path: Path, colour_encoder) -> None:
    library = open_library(tmp_path, colour_encoder)
    report = library.add([(image_bytes(c), f"{c}.png") for c in COLOUR_NAMES[:4]])
    ids = [r.id for r in report.results]
    library.add([(image_bytes(COLOUR_NAMES[4]), "late.png")])  # the journal
    library.remove([ids[1]])
    fresh = open_library(tmp_path, colour_encoder)
    state, _ = load_library(tmp_path / "features_library.pth")
    assert isinstance(state.files, TextColumn) and isinstance(state.names, TextColumn)
    again = fresh.add([(image_bytes(COLOUR_NAMES[0]), "again.png"), (image_bytes(COLOUR_NAMES[1]), "back.png")])
    assert [(r.status, r.id) for r in again.results] == [("duplicate", ids[0]), ("added", ids[-1] + 2)]
    for entry in fresh:
        assert fresh.find_sha256(entry.sha256) == entry.id and fresh.find_sha256(entry.sha256.upper()) == entry.id
        assert entry.path.read_bytes() and hashlib.sha256(entry.path.read_bytes()).hexdigest() == entry.sha256
    assert [e.name for e in fresh.entries([ids[0], ids[-1] + 1, ids[-1] + 2])] == [
        f"{COLOUR_NAMES[0]}.png", "late.png", "back.png"]
    assert fresh.find_sha256("not a hash") is None and fresh.check().ok


def test_the_million_benchmark_measures_a_small_library_in_process(tmp_path: Path) -> None:
    from clip_app.bench.perf.million import measure_open, write_library

    write_library(tmp_path / "lib.pth", 300, 8)
    figures = measure_open(tmp_path / "lib.pth", tmp_path / "gallery", 8)
    assert figures["rows"] == 300 and figures["dim"] == 8
    assert {"rss_after_load_mb", "peak_rss_mb", "load_seconds", "search_seconds", "rss_after_search_mb",
            "check_seconds", "peak_after_check_mb"} <= set(figures)
    state = load_state(tmp_path / "lib.pth")
    assert state.files[0] == "000001.jpg" and state.names[-1] == "IMG_00299.jpg" and len(state.id_of_hash) == 300
