"""Appending to a library state grows every column in place in buffers shared with the state it came from (no copy
of the N existing rows), while every state stays a snapshot: older states read exactly their own rows, a branch (an
older state appended to again) gets its own copy, and remove/reorder/with_rows/save/load give independent states."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import torch

from clip_app.library.columns import HashColumn, TextColumn
from clip_app.library.fileformat import load_state, save_state
from clip_app.library.growable import Growable
from clip_app.library.lookups import TAIL_ROWS, HashIndex
from clip_app.library.state import LibraryState, invariant_problem

DIM = 8


def _hex(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def _row(i: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(1, DIM, generator=torch.Generator().manual_seed(i)), dim=1)


def _grow(state: LibraryState, i: int, digest: str | None = None) -> LibraryState:
    return state.appended([i], _row(i), [f"{i:06d}.png"], [digest or _hex(i)], [i], [f"photo {i}"], added=float(i))


def _columns(state: LibraryState) -> list[tuple]:
    """Every row as a tuple of all its columns, in row order."""
    return list(zip(state.ids.tolist(), state.files.tolist(), state.sha256.tolist(), state.names.tolist(),
                    state.added.tolist(), state.sizes.tolist(), map(tuple, state.features16.tolist())))


def _expected(ids: list[int]) -> list[tuple]:
    return [(i, f"{i:06d}.png", _hex(i), f"photo {i}", float(i), i, tuple(_row(i).half()[0].tolist())) for i in ids]


def _pointers(state: LibraryState) -> dict[str, int]:
    """Where each column's buffer starts (equal pointers: the same buffer, not a copy)."""
    return {"features": state.features16.data_ptr(), "ids": state.ids.data_ptr(), "added": state.added.data_ptr(),
            "sizes": state.sizes.data_ptr(), "sha256": state.sha256.digests.ctypes.data,
            "files": id(state.files._blob), "files_bounds": state.files._bounds.ctypes.data,
            "names": id(state.names._blob), "names_bounds": state.names._bounds.ctypes.data}


def _base(n: int = 40) -> LibraryState:
    state = LibraryState.empty("m", "m", DIM)
    for i in range(1, n + 1):
        state = _grow(state, i)
    return state


def test_appending_to_the_newest_state_writes_in_place_and_older_states_keep_their_rows() -> None:
    states = [_base()]
    state = states[0]
    assert state.row_of[1] == 0 and state.id_of_hash[_hex(1)] == 1  # the lookups exist: carried along, not rebuilt
    for i in range(41, 61):
        state = _grow(state, i)
        states.append(state)
    for key in _pointers(state):  # one buffer per column, shared by all 21 states (the text buffers' spare room
        # is counted in bytes, at least 256: they may fill up and be copied once on the way)
        assert len({_pointers(s)[key] for s in states}) <= (2 if key in ("files", "names") else 1), key
    for k, s in enumerate(states):  # every state reads exactly its own rows, none of the later ones
        assert _columns(s) == _expected(list(range(1, 41 + k))) and invariant_problem(s) is None
        assert s.row_of.get(40 + k + 1) is None and s.id_of_hash.get(_hex(40 + k + 1)) is None
        assert s.files.count(f"{41 + k:06d}.png") == 0 and f"{41 + k:06d}.png" not in s.names
    last = states[-1]
    assert last.row_of[60] == 59 and last.id_of_hash[_hex(60)] == 60 and last.files[-1] == "000060.png"
    assert states[-1]._row_of is not None and states[-1]._id_of_hash is not None  # carried, not dropped


def test_a_branch_copies_and_both_branches_read_their_own_rows() -> None:
    base = _base()
    tip = _grow(_grow(base, 41), 42)
    branch = _grow(base, 43)  # base is no longer the newest state over its buffers: this append must copy
    mine, theirs = _pointers(branch), _pointers(tip)
    assert all(mine[k] != theirs[k] for k in mine)
    assert _columns(tip) == _expected(list(range(1, 43))) and _columns(branch) == _expected(list(range(1, 41)) + [43])
    assert _columns(base) == _expected(list(range(1, 41)))
    branch2 = _grow(branch, 44)  # the branch is the newest state over its own buffers: in place again
    tip2 = _grow(tip, 45)
    assert _pointers(branch2) == mine and _pointers(tip2) == theirs
    assert _columns(branch2) == _expected(list(range(1, 41)) + [43, 44])
    assert _columns(tip2) == _expected(list(range(1, 43)) + [45])
    assert 43 not in tip2.row_of and tip2.id_of_hash.get(_hex(44)) is None and "000045.png" not in branch2.files


def test_two_threads_appending_to_one_state_each_get_their_own_rows() -> None:
    base = _grow(_base(), 41)
    results: dict[int, LibraryState] = {}
    barrier = threading.Barrier(2)

    def append(i: int) -> None:
        barrier.wait()
        results[i] = _grow(base, i)

    threads = [threading.Thread(target=append, args=(i,)) for i in (50, 51)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in (50, 51):  # one wrote in place, the other copied: neither sees the other's row
        assert _columns(results[i]) == _expected(list(range(1, 42)) + [i])


def test_remove_reorder_and_with_rows_give_independent_states() -> None:
    base = _grow(_base(), 41)
    smaller = base.without([3, 41])
    reverse = base.reordered(torch.arange(len(base) - 1, -1, -1))
    changed = base.with_rows([5], _row(500), [_hex(500)], [500])
    for derived in (smaller, reverse, changed):
        assert derived.features16.data_ptr() != base.features16.data_ptr() or derived is changed
    grown = [_grow(s, 100) for s in (smaller, reverse, changed)]  # each appends on its own, never into base's
    tip = _grow(base, 101)
    kept = [i for i in range(1, 42) if i not in (3, 41)]
    assert _columns(grown[0]) == _expected(kept + [100]) and _columns(smaller) == _expected(kept)
    assert _columns(grown[1])[:-1] == _expected(list(range(41, 0, -1))) and int(grown[1].ids[-1]) == 100
    assert grown[1].row_of[100] == 41 and grown[1].row_of[1] == 40  # reordered IDs are looked up by search
    assert _columns(grown[2])[4][2] == _hex(500) and grown[2].sizes[4] == 500 and grown[2].id_of_hash[_hex(500)] == 5
    assert _columns(grown[2])[5:] == _expected(list(range(6, 42)) + [100])
    assert _columns(tip) == _expected(list(range(1, 42)) + [101]) and _columns(base) == _expected(list(range(1, 42)))
    assert _columns(changed)[:4] == _expected([1, 2, 3, 4]) and 100 not in changed.row_of


def test_spare_room_only_after_an_append_and_bounded() -> None:
    n = 10_000
    ids = torch.arange(1, n + 1)
    built = LibraryState.build("m", "m", DIM, ids=ids, features=torch.zeros(n, DIM, dtype=torch.float16),
                               files=[f"{i}.png" for i in range(1, n + 1)], sha256=[_hex(i) for i in range(1, n + 1)],
                               added=torch.zeros(n, dtype=torch.float64), sizes=torch.ones(n, dtype=torch.int64),
                               names=[f"{i}" for i in range(1, n + 1)])
    assert built._f16.capacity == n and built.features16.data_ptr() == built._f16.data.data_ptr()  # adopted as is
    grown = _grow(built, n + 1)
    capacities = [grown._f16.capacity] + [g.capacity for g in grown._grow] + [grown.sha256._grow.capacity]
    assert all(n + 1 < c <= n + 1 + (n + 1) // 8 for c in capacities)  # spare room: an eighth at most
    assert len(grown.files._blob) <= (len(built.files.joined()) + 20) * 9 // 8
    assert torch.equal(built.ids, ids) and len(built.files) == n  # the built state is untouched


def test_many_appends_copy_each_buffer_only_a_few_times_and_round_trip_through_a_file(tmp_path: Path) -> None:
    state = _base(10)
    assert state.id_of_hash[_hex(2)] == 2 and state.row_of[2] == 1
    seen: dict[str, set[int]] = {}
    last = 10 + TAIL_ROWS + 300  # past the hash index's tail: merged once on the way
    for i in range(11, last + 1):
        state = _grow(state, i, digest=_hex(11) if i == last else None)  # the last one repeats ID 11's bytes
        for key, pointer in _pointers(state).items():
            seen.setdefault(key, set()).add(pointer)
    # amortised: a buffer is copied when its spare room (n/8 rows, at least 256 and 4 KiB) is full: 5-10 times here,
    # not once per append (2,348)
    assert max(len(p) for p in seen.values()) <= 12
    assert state.id_of_hash.get(_hex(11)) == 11 and state.id_of_hash[_hex(last - 1)] == last - 1
    assert len(state.id_of_hash._order) < len(state)  # the newest digests wait in the tail
    fresh = HashIndex(state.sha256.digests, state.ids)
    assert all(state.id_of_hash.get(_hex(i)) == fresh.get(_hex(i)) == i for i in range(1, last, 97))
    assert state.id_of_hash.first_repeat() == fresh.first_repeat() == (10, last - 1)
    assert len(state.id_of_hash) == len(fresh) == last - 1
    assert "two rows share one content hash" in (invariant_problem(state) or "")

    ok = state.without([last])
    path = tmp_path / "lib.pth"
    save_state(ok, path)
    raw = torch.load(path, weights_only=True)
    for key in ("features", "ids", "added", "sizes", "sha256"):  # only the rows are written, no spare room
        assert raw[key].untyped_storage().nbytes() == raw[key].numel() * raw[key].element_size()
    back = load_state(path)
    assert _columns(back) == _columns(ok) == _expected(list(range(1, last))) and invariant_problem(back) is None
    again = _grow(back, last + 1)  # a loaded state grows like any other
    assert _columns(again) == _expected(list(range(1, last)) + [last + 1]) and _columns(back) == _columns(ok)


def test_columns_on_their_own_grow_in_place_and_branch_by_copy() -> None:
    text = TextColumn.of(["a", "bé"]).extended(["c"])
    longer = text.extended(["", "dd"])
    other = text.extended(["x"])
    assert longer._blob is text._blob and other._blob is not text._blob
    assert text == ["a", "bé", "c"] and longer == ["a", "bé", "c", "", "dd"] and other == ["a", "bé", "c", "x"]
    assert text.joined() == "a\nbé\nc" and "dd" not in text and text.count("") == 0 and longer.count("") == 1
    assert text.nbytes == len("a\nbé\nc".encode()) + 4 * 8 and text.take([2, 0]) == ["c", "a"]
    assert list(text.first_bytes()) == [ord("a"), ord("b"), ord("c")] and not text.holds_any("d")
    hashes = HashColumn.of([_hex(1)]).extended([_hex(2)])
    more, fork = hashes.extended([_hex(3)]), hashes.extended([_hex(4)])
    assert more.digests.ctypes.data == hashes.digests.ctypes.data != fork.digests.ctypes.data
    assert list(hashes) == [_hex(1), _hex(2)] and list(more)[2] == _hex(3) and list(fork)[2] == _hex(4)
    frozen = Growable(np.arange(4))  # an adopted buffer is never written into: an append copies it
    assert frozen.extend(4, np.array([9])).data is not frozen.data and frozen.data.tolist() == [0, 1, 2, 3]
