"""Review of the growable columns: an append whose columns disagree in length is refused with a clear message
before any shared buffer is claimed (a growable column sliced to the ID count would otherwise read the buffer's
uninitialised spare room, and invariant_problem could no longer see the mismatch)."""

from __future__ import annotations

import hashlib

import pytest
import torch

from clip_app.library.state import LibraryState, invariant_problem

DIM = 4


def _hex(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def _base() -> LibraryState:
    state = LibraryState.empty("m", "m", DIM)
    for i in (1, 2):
        state = state.appended([i], torch.ones(1, DIM), [f"{i}.png"], [_hex(i)], [i], [f"n{i}"], added=float(i))
    return state


GOOD = dict(ids=[3, 4], features=torch.ones(2, DIM), files=["3.png", "4.png"], sha256=[_hex(3), _hex(4)],
            sizes=[3, 4], names=["n3", "n4"], added=[3.0, 4.0])


@pytest.mark.parametrize("column, value", [
    ("sizes", [3]), ("added", [3.0]), ("added", [3.0, 4.0, 5.0]), ("features", torch.ones(1, DIM)),
    ("features", torch.ones(3, DIM)), ("names", ["n3"]), ("files", ["3.png"]), ("sha256", [_hex(3)]),
    ("features", torch.ones(2, DIM + 1)), ("features", torch.ones(DIM)),
])
def test_an_append_with_columns_of_different_lengths_is_refused_and_loses_nothing(column: str, value: object) -> None:
    base = _base()
    before = (base.ids.tolist(), base.sizes.tolist(), base.added.tolist(), base.features16.tolist())
    args = dict(GOOD, **{column: value})
    with pytest.raises(ValueError, match=column):
        base.appended(args.pop("ids"), args.pop("features"), args.pop("files"), args.pop("sha256"),
                      args.pop("sizes"), args.pop("names"), added=args.pop("added"))
    assert (base.ids.tolist(), base.sizes.tolist(), base.added.tolist(), base.features16.tolist()) == before
    grown = base.appended(**{k: v for k, v in GOOD.items()})  # nothing was claimed: still written in place
    assert grown.features16.data_ptr() == base.features16.data_ptr() and grown.ids.data_ptr() == base.ids.data_ptr()
    assert grown.sizes.tolist() == [1, 2, 3, 4] and grown.added.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert invariant_problem(grown) is None
