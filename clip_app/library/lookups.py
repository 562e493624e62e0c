"""Lookups over the library state's compact columns, by binary search over sorted arrays instead of dicts of one
Python object per row: RowIndex (ID -> row) and HashIndex (hex sha256 -> the first ID with those bytes)."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Iterator, Sequence

import numpy as np
import torch

from .columns import HashColumn, _raw_digest


def _prefix_keys(digests: np.ndarray) -> np.ndarray:
    """Uint64 [N]: the first 8 bytes of each digest, the sort key of a HashIndex (equal digests, equal keys)."""
    return np.ascontiguousarray(digests[:, :8]).view(np.uint64).reshape(-1)


class _ByGet(Mapping):
    """A read-only mapping whose lookups all go through get() (None: absent)."""

    def get(self, key: object, default: int | None = None) -> int | None:  # type: ignore[override]
        raise NotImplementedError

    def __getitem__(self, key: object) -> int:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None


class RowIndex(_ByGet):
    """ID -> row of an int64 ID column [N] (ascending in a library state), by binary search: no dict of N entries.
    Behaves as dict(zip(ids, range(N))) (with a repeated ID, its last row)."""

    def __init__(self, ids: torch.Tensor) -> None:
        values = ids.contiguous().numpy()
        if len(values) < 2 or bool((values[1:] > values[:-1]).all()):
            self._order, self._sorted = None, values
        else:
            self._order = np.argsort(values, kind="stable")
            self._sorted = values[self._order]
        self._ids = values

    def appended(self, ids: torch.Tensor) -> "RowIndex":
        """The index of these IDs [N + M], whose first N are this index's and the rest new, ascending and larger
        than every old one (the caller has checked): O(1) when this index's IDs ascend (no new check of all N)."""
        if self._order is not None:
            return RowIndex(ids)
        index = RowIndex.__new__(RowIndex)
        values = ids.contiguous().numpy()
        index._order, index._sorted, index._ids = None, values, values
        return index

    def get(self, key: object, default: int | None = None) -> int | None:  # type: ignore[override]
        if isinstance(key, float) and key.is_integer():
            key = int(key)
        try:
            wanted = operator.index(key)  # type: ignore[arg-type]
        except TypeError:
            return default
        if not -2**63 <= wanted < 2**63:
            return default
        at = int(np.searchsorted(self._sorted, wanted, side="right")) - 1
        if at < 0 or int(self._sorted[at]) != wanted:
            return default
        return at if self._order is None else int(self._order[at])

    def __iter__(self) -> Iterator[int]:
        return iter(dict.fromkeys(self._ids.tolist()))

    def __len__(self) -> int:
        if self._order is None:
            return len(self._ids)
        return int(len(self._sorted) and 1 + (self._sorted[1:] != self._sorted[:-1]).sum())

    def rows(self, ids: Sequence[int] | torch.Tensor) -> np.ndarray:
        """Int64 [M]: the row of each of these IDs, -1 for an unknown one (one vectorised search)."""
        wanted = np.asarray(ids.numpy() if isinstance(ids, torch.Tensor) else list(ids), dtype=np.int64).reshape(-1)
        if not len(self._sorted):
            return np.full(len(wanted), -1, dtype=np.int64)
        at = np.searchsorted(self._sorted, wanted, side="right") - 1
        found = (at >= 0) & (self._sorted[np.maximum(at, 0)] == wanted)
        rows = at if self._order is None else self._order[np.maximum(at, 0)]
        return np.where(found, rows, -1).astype(np.int64)


TAIL_ROWS = 2_048  # appended digests wait in an unsorted tail (scanned on lookup) until this many, then are merged


class HashIndex(_ByGet):
    """Hex sha256 -> the first (lowest-row, so lowest) ID holding those bytes, by binary search over the digests'
    sorted 8-byte prefixes (16 bytes a row) instead of a dict of N hex strings (about 140 bytes a row).

    The sorted arrays cover the first len(order) rows; rows appended after them form a tail of at most TAIL_ROWS,
    scanned on lookup, so that appending one row does not copy the sorted arrays (O(N)) every time: they are merged
    (one pass, no new sort) when the tail grows past TAIL_ROWS, about O(N / TAIL_ROWS) per row appended."""

    def __init__(self, digests: np.ndarray, ids: torch.Tensor, keys: np.ndarray | None = None,
                 order: np.ndarray | None = None) -> None:
        self._digests, self._ids = digests, ids.contiguous().numpy()
        if keys is None or order is None:
            prefixes = _prefix_keys(digests)
            order = np.argsort(prefixes, kind="stable")  # equal prefixes keep row order: the first row is found first
            keys = prefixes[order]
        self._keys, self._order = keys, order

    def appended(self, digests: np.ndarray, ids: torch.Tensor) -> "HashIndex":
        """The index of these digests [N + M, 32] and IDs [N + M], whose first N rows are this index's and the rest
        are new: they join the unsorted tail (the sorted arrays are shared, not copied) while it holds at most
        TAIL_ROWS rows, else the whole tail is merged into the sorted arrays."""
        if len(digests) - len(self._order) <= TAIL_ROWS:
            return HashIndex(digests, ids, self._keys, self._order)
        return self._merged(digests, ids)

    def _whole(self) -> "HashIndex":
        """This index with its tail merged into the sorted arrays (itself when it has none)."""
        if len(self._order) == len(self._digests):
            return self
        return self._merged(self._digests, torch.from_numpy(self._ids))

    def _merged(self, digests: np.ndarray, ids: torch.Tensor) -> "HashIndex":
        """The index of these digests and IDs, whose rows past the sorted arrays are merged into them in one pass
        (no new sort of the whole library)."""
        n = len(self._order)
        prefixes = _prefix_keys(digests[n:])
        new_order = np.argsort(prefixes, kind="stable")
        new_keys = prefixes[new_order]
        at = np.searchsorted(self._keys, new_keys, side="right")  # after equal old keys: earlier rows stay first
        keys = np.insert(self._keys, at, new_keys)
        order = np.insert(self._order, at, new_order + n)
        return HashIndex(digests, ids, keys, order)

    def first_row(self, raw: bytes) -> int | None:
        """The first row holding these 32 bytes, or None."""
        key = np.frombuffer(raw[:8], dtype=np.uint64)[0]
        lo = int(np.searchsorted(self._keys, key, side="left"))
        hi = int(np.searchsorted(self._keys, key, side="right"))
        found = [int(row) for row in self._order[lo:hi] if self._digests[row].tobytes() == raw]
        if found:  # the sorted rows all come before the tail's
            return min(found)
        main = len(self._order)
        if main < len(self._digests):
            tail = self._digests[main:]
            for at in np.flatnonzero(_prefix_keys(tail) == key).tolist():
                if tail[at].tobytes() == raw:
                    return main + at
        return None

    def get(self, key: object, default: int | None = None) -> int | None:  # type: ignore[override]
        raw = _raw_digest(key)
        row = None if raw is None else self.first_row(raw)
        return default if row is None else int(self._ids[row])

    def first_repeat(self) -> tuple[int, int] | None:
        """(first row, repeat row) of the first digest that occurs twice (the smallest repeat row), else None."""
        if len(self._order) != len(self._digests):
            return self._whole().first_repeat()
        same = np.flatnonzero(self._keys[1:] == self._keys[:-1])
        if not len(same):  # the usual case: every prefix differs, so every digest does
            return None
        candidates = np.union1d(self._order[same], self._order[same + 1])
        first_of: dict[bytes, int] = {}
        for row in sorted(candidates.tolist()):
            raw = self._digests[row].tobytes()
            if raw in first_of:
                return first_of[raw], row
            first_of[raw] = row
        return None

    def _pairs(self) -> dict[str, int]:
        """The mapping as a dict (N hex strings: for whole-library passes only)."""
        return dict(zip(reversed(HashColumn(self._digests).tolist()), reversed(self._ids.tolist())))

    def items(self):  # type: ignore[override]
        return self._pairs().items()

    def keys(self):  # type: ignore[override]
        return self._pairs().keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self._pairs())

    def __len__(self) -> int:
        if len(self._order) != len(self._digests):
            return len(self._whole())
        if len(self._keys) > 1 and bool((self._keys[1:] == self._keys[:-1]).any()):
            return len(self._pairs())  # some prefixes repeat: count distinct digests the slow way
        return len(self._order)
