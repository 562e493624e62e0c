"""Compact columns of the library state: per-row text and hashes held in a few flat buffers, not as one Python object
per row (at a million rows, three lists of strings took about 250 MB beside the 977 MiB of float16 rows).

TextColumn: N strings as one UTF-8 buffer (the file's newline-separated form) plus row offsets; a str is made only
for a row that is read. HashColumn: N sha256 digests as uint8 [N, 32]; rows read as hex strings.
Every column is immutable: appending or taking rows makes a new one. An append writes the new rows in place into
buffers shared with the column it came from (growable.py: O(row), not O(N)); each column reads only its own first
rows, which never change. The lookups over them: lookups.py."""

from __future__ import annotations

import operator
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from .growable import Growable

_NEWLINE = 10  # b"\n": the separator of the file's text columns, never part of a row
_EMPTY_BOUNDS = np.zeros(1, dtype=np.int64)


def _encode(text: str) -> bytes:
    # surrogatepass: file names the file system gave as lone surrogates round-trip exactly (pickle allows them too)
    return text.encode("utf-8", "surrogatepass")


def _bounds(blob: bytes, n: int) -> np.ndarray:
    """Int64 [n + 1]: row i of a newline-joined buffer is blob[b[i]:b[i + 1] - 1]; ValueError when it does not hold
    exactly n rows (a row with a line break in it)."""
    if n == 0:
        if blob:
            raise ValueError("0 rows but some text")
        return _EMPTY_BOUNDS
    breaks = np.flatnonzero(np.frombuffer(blob, dtype=np.uint8) == _NEWLINE)
    if len(breaks) != n - 1:
        raise ValueError(f"{len(breaks) + 1} lines for {n} rows (a line break inside an entry?)")
    bounds = np.empty(n + 1, dtype=np.int64)
    bounds[0] = 0
    bounds[1:n] = breaks + 1
    bounds[n] = len(blob) + 1
    return bounds


def _runs(index: np.ndarray) -> list[tuple[int, int]]:
    """(first, stop) positions in `index` [M] of its runs of consecutive values."""
    breaks = (np.flatnonzero(index[1:] != index[:-1] + 1) + 1).tolist()
    return list(zip([0] + breaks, breaks + [len(index)]))


def _positions(index: Sequence[int] | np.ndarray | torch.Tensor, n: int) -> np.ndarray:
    """Row positions as int64 [M] (negative ones count from the end); IndexError when one is out of range."""
    if isinstance(index, torch.Tensor):
        index = index.numpy()
    idx = np.asarray(index, dtype=np.int64).reshape(-1)
    if len(idx):
        idx = np.where(idx < 0, idx + n, idx)
        if int(idx.min()) < 0 or int(idx.max()) >= n:
            raise IndexError("row index out of range")
    return idx


class TextColumn(Sequence[str]):
    """N strings without line breaks, as one UTF-8 buffer joined by newlines plus int64 offsets [N + 1]. After an
    append the buffers may be longer (shared, with spare room): this column reads only its first `_size` bytes and
    N + 1 offsets."""

    __slots__ = ("_blob", "_size", "_bounds", "_grow")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, blob: bytes = b"", bounds: np.ndarray = _EMPTY_BOUNDS) -> None:
        self._blob: bytes | bytearray = blob
        self._size, self._bounds = len(blob), bounds
        self._grow: tuple[Growable, Growable] | None = None  # (blob, offsets) shared with appended columns

    @classmethod
    def _over(cls, blob: Growable, bounds: Growable, size: int, n: int) -> "TextColumn":
        """The column of the first n rows (size bytes) of shared growable buffers."""
        column = cls(blob.data, bounds.data[:n + 1])  # type: ignore[arg-type, index]
        column._size, column._grow = size, (blob, bounds)
        return column

    @classmethod
    def of(cls, items: Iterable[str]) -> "TextColumn":
        """A column of these strings (a TextColumn is returned as it is); ValueError when one holds a line break."""
        if isinstance(items, TextColumn):
            return items
        items = list(items)
        for item in items:
            if not isinstance(item, str):
                raise TypeError(f"a text column holds strings, not {type(item).__name__}")
        return cls.from_joined("\n".join(items), len(items))

    @classmethod
    def from_joined(cls, text: str, n: int) -> "TextColumn":
        """A column of the n lines of one newline-joined string (the file's form); ValueError when it holds more or
        fewer lines."""
        blob = _encode(text)
        return cls(blob, _bounds(blob, n))

    def joined(self) -> str:
        """The rows joined by newlines: "\\n".join(column), as the file stores them."""
        if self._size == len(self._blob):
            return self._blob.decode("utf-8", "surrogatepass")
        return str(memoryview(self._blob)[:self._size], "utf-8", "surrogatepass")

    def _bytes(self) -> memoryview:
        """This column's bytes of the (maybe longer, shared) buffer, without a copy."""
        return memoryview(self._blob)[:self._size]

    @property
    def nbytes(self) -> int:
        """Bytes of the column's buffers that it reads (spare room shared with appended columns not counted)."""
        return self._size + self._bounds.nbytes

    def __len__(self) -> int:
        return len(self._bounds) - 1

    def _text(self, row: int) -> str:
        return self._blob[self._bounds[row]:self._bounds[row + 1] - 1].decode("utf-8", "surrogatepass")

    def __getitem__(self, row):  # type: ignore[override]
        if isinstance(row, slice):
            return [self._text(i) for i in range(*row.indices(len(self)))]
        i = operator.index(row)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("text column index out of range")
        return self._text(i)

    def __iter__(self) -> Iterator[str]:
        return iter(self.tolist())

    def tolist(self) -> list[str]:
        """Every row as a str (N objects: for whole-library passes, never kept)."""
        return self.joined().split("\n") if len(self) else []

    def byte_lengths(self) -> np.ndarray:
        """Int64 [N]: the UTF-8 length of every row."""
        return np.diff(self._bounds) - 1

    def first_bytes(self) -> np.ndarray:
        """Uint8 [N]: the first UTF-8 byte of every row (0 for an empty row)."""
        data = np.frombuffer(self._blob, dtype=np.uint8, count=self._size)
        starts = self._bounds[:-1]
        if not len(data):
            return np.zeros(len(starts), dtype=np.uint8)
        return np.where(self.byte_lengths() > 0, data[np.minimum(starts, len(data) - 1)], 0).astype(np.uint8)

    def holds_any(self, characters: str) -> bool:
        """True when some row holds one of these characters."""
        return any(self._blob.find(_encode(c), 0, self._size) >= 0 for c in characters)

    def _matches(self, value: object) -> Iterator[int]:
        """Rows equal to value, ascending: found by a byte search of the buffer (C speed), not row by row."""
        if not isinstance(value, str) or "\n" in value or not len(self):
            return
        if not value:  # empty rows: found from the offsets (a search for b"" would stop at every byte)
            yield from np.flatnonzero(self.byte_lengths() == 0).tolist()
            return
        needle, blob, bounds, size = _encode(value), self._blob, self._bounds, self._size
        at = blob.find(needle, 0, size)
        while at >= 0:
            end = at + len(needle)
            if (at == 0 or blob[at - 1] == _NEWLINE) and (end == size or blob[end] == _NEWLINE):
                yield int(np.searchsorted(bounds, at, side="right")) - 1
                at = blob.find(needle, end + 1, size)
            else:
                at = blob.find(needle, at + 1, size)

    def __contains__(self, value: object) -> bool:
        return next(self._matches(value), None) is not None

    def count(self, value: object) -> int:
        return sum(1 for _ in self._matches(value))

    def index(self, value: object, start: int = 0, stop: int | None = None) -> int:
        stop = len(self) if stop is None else stop
        for row in self._matches(value):
            if start <= row < stop:
                return row
        raise ValueError(f"{value!r} is not in the column")

    def extended(self, items: Iterable[str]) -> "TextColumn":
        """A new column: these rows, then `items`. Written in place into the buffers this column shares when no
        other column has grown past it (O(new rows)); else its rows are copied once into buffers with spare room."""
        more = TextColumn.of(items)
        if not len(more):
            return self
        n = len(self)
        # a column not made by an append owns no spare room: its buffers are adopted full (never written into)
        blob, bounds = self._grow or (Growable(self._blob), Growable(self._bounds))
        piece = (b"\n" + more._bytes().tobytes()) if n else more._bytes().tobytes()
        offset = self._size + 1 if n else 0  # where the first new row starts
        grown_blob = blob.extend(self._size, piece)
        grown_bounds = bounds.extend(n + 1, more._bounds[1:] + offset)
        return TextColumn._over(grown_blob, grown_bounds, self._size + len(piece), n + len(more))

    def take(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> "TextColumn":
        """A new column of the rows at these positions [M], in that order: runs of consecutive rows (what removing a
        few leaves) are copied as blocks."""
        idx = _positions(index, len(self))
        if not len(idx):
            return TextColumn()
        starts, stops = self._bounds[:-1], self._bounds[1:] - 1
        blob = self._blob
        pieces = [blob[starts[idx[a]]:stops[idx[b - 1]]] for a, b in _runs(idx)]
        bounds = np.empty(len(idx) + 1, dtype=np.int64)
        bounds[0] = 0
        np.cumsum(stops[idx] - starts[idx] + 1, out=bounds[1:])
        return TextColumn(b"\n".join(pieces), bounds)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TextColumn):
            return self._bytes() == other._bytes() and np.array_equal(self._bounds, other._bounds)
        if isinstance(other, (list, tuple)):
            return self.tolist() == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        head = ", ".join(repr(x) for x in self[:3])
        return f"TextColumn([{head}{', ...' if len(self) > 3 else ''}], rows={len(self)})"


class HashColumn(Sequence[str]):
    """N sha256 digests as uint8 [N, 32]; a row reads as its lowercase hex string."""

    __slots__ = ("_digests", "_grow")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, digests: np.ndarray | None = None, grow: Growable | None = None) -> None:
        self._digests = np.zeros((0, 32), dtype=np.uint8) if digests is None else digests
        self._grow = grow  # the buffer [capacity, 32] whose first rows these are, shared with appended columns

    @classmethod
    def of(cls, items: Iterable[str] | torch.Tensor | np.ndarray) -> "HashColumn":
        """A column of hex digests (or of a uint8 [N, 32] tensor/array, shared, not copied); ValueError for a
        string that is not 64 hex digits."""
        if isinstance(items, HashColumn):
            return items
        if isinstance(items, torch.Tensor):
            items = items.contiguous().numpy()
        if isinstance(items, np.ndarray):
            if items.dtype != np.uint8 or items.ndim != 2 or items.shape[1] != 32:
                raise TypeError(f"digests must be uint8 [N, 32], not {items.dtype} {list(items.shape)}")
            return cls(np.ascontiguousarray(items))
        items = list(items)
        for item in items:
            if not isinstance(item, str) or len(item) != 64:
                raise ValueError(f"{item!r} is not a sha256 digest (64 hex digits)")
        try:
            raw = bytes.fromhex("".join(items))
        except ValueError:
            raise ValueError("a sha256 digest holds characters that are not hex digits") from None
        if len(raw) != 32 * len(items):
            raise ValueError("a sha256 digest holds characters that are not hex digits")
        return cls(np.frombuffer(bytearray(raw), dtype=np.uint8).reshape(len(items), 32))

    @property
    def digests(self) -> np.ndarray:
        """The digests, uint8 [N, 32] (shared: never modify)."""
        return self._digests

    def tensor(self) -> torch.Tensor:
        """The digests as a uint8 tensor [N, 32] sharing this column's memory (the file's form)."""
        return torch.from_numpy(self._digests)

    @property
    def nbytes(self) -> int:
        return self._digests.nbytes

    def __len__(self) -> int:
        return len(self._digests)

    def digest(self, row: int) -> bytes:
        """The 32 bytes of one row."""
        return self._digests[row].tobytes()

    def __getitem__(self, row):  # type: ignore[override]
        if isinstance(row, slice):
            return [self._digests[i].tobytes().hex() for i in range(*row.indices(len(self)))]
        return self._digests[operator.index(row)].tobytes().hex()

    def tolist(self) -> list[str]:
        text = self._digests.tobytes().hex()
        return [text[i:i + 64] for i in range(0, len(text), 64)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tolist())

    def joined(self) -> str:
        """The hex digests joined by newlines: "\\n".join(column)."""
        return "\n".join(self.tolist())

    def __contains__(self, value: object) -> bool:
        raw = _raw_digest(value)
        return raw is not None and bool((self._digests == np.frombuffer(raw, dtype=np.uint8)).all(axis=1).any())

    def extended(self, items: Iterable[str] | "HashColumn") -> "HashColumn":
        """A new column: these digests, then `items` (in place into the shared buffer when no other column has grown
        past this one: O(new rows); else copied once into a buffer with spare room)."""
        more = HashColumn.of(items)
        if not len(more):
            return self
        n = len(self)
        grown = (self._grow or Growable(self._digests)).extend(n, more._digests)
        return HashColumn(grown.data[:n + len(more)], grown)  # type: ignore[index]

    def take(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> "HashColumn":
        """A new column of the digests at these positions [M], in that order."""
        return HashColumn(self._digests[_positions(index, len(self))])

    def replaced(self, rows: Sequence[int], items: Sequence[str]) -> "HashColumn":
        """A copy where these rows hold these hex digests."""
        digests = self._digests.copy()
        if len(rows):
            digests[_positions(rows, len(self))] = HashColumn.of(items)._digests
        return HashColumn(digests)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, HashColumn):
            return np.array_equal(self._digests, other._digests)
        if isinstance(other, (list, tuple)):
            return self.tolist() == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        head = ", ".join(repr(x) for x in self[:2])
        return f"HashColumn([{head}{', ...' if len(self) > 2 else ''}], rows={len(self)})"


def _raw_digest(value: object) -> bytes | None:
    """32 bytes of a 64-hex-digit string (either case), else None."""
    if not isinstance(value, str) or len(value) != 64:
        return None
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        return None
    return raw if len(raw) == 32 else None
