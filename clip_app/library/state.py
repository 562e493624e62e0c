"""LibraryState: the library's rows in memory (ids, features, files, hashes, ...), never changed once made; appends
share every column's buffer (growable.py) so a new state costs O(new rows), not a copy of the existing ones. Text
and hash columns are compact (columns.py): no Python object per row."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, Sequence, Sized

import torch

from .columns import HashColumn, TextColumn
from .growable import Growable, with_room
from .lookups import HashIndex, RowIndex

FORMAT_VERSION = 1
FIRST_ID = 1
STORED_DTYPE = torch.float16


def _growable(rows: torch.Tensor) -> Growable:
    """A growable column holding these rows, with room to append without copying."""
    data = with_room(rows, len(rows))
    data[:len(rows)] = rows
    return Growable(data, len(rows))


def _taken(column: Growable, index: torch.Tensor) -> Growable:
    """A new growable column holding the rows of `column` at these positions [M], in that order (no conversion of
    the values): runs of consecutive positions (what removing a few rows leaves) are copied as blocks, else
    gathered."""
    m, source = len(index), column.data
    assert isinstance(source, torch.Tensor)
    data = with_room(source, m)
    if m:
        breaks = (torch.nonzero(index[1:] != index[:-1] + 1).flatten() + 1).tolist()
        if len(breaks) <= MAX_COPY_RUNS:
            for start, stop in zip([0] + breaks, breaks + [m]):
                first = int(index[start])
                data[start:stop] = source[first:first + stop - start]
        else:
            torch.index_select(source, 0, index, out=data[:m])
    return Growable(data, m)


MAX_COPY_RUNS = 256  # _taken copies up to this many blocks one by one; more are gathered with index_select


def _holder(column: torch.Tensor, grow: Growable | None) -> Growable:
    """The shared buffer a state's column [N] is the head of; a column of unknown origin (a loaded tensor, or one
    given to replace()) is adopted full: never written into, so its first append copies it."""
    if grow is not None and column.is_contiguous() and column.data_ptr() == grow.data.data_ptr():  # type: ignore
        return grow
    return Growable(column)


def _exact(view: torch.Tensor) -> torch.Tensor:
    """The same memory as a contiguous leading view, in a storage of exactly its size (torch.save writes whole
    storages, so saving a view of a larger buffer would write the buffer's spare rows too)."""
    nbytes = view.numel() * view.element_size()
    if view.untyped_storage().nbytes() == nbytes and view.storage_offset() == 0:
        return view
    storage = view.untyped_storage()[view.storage_offset() * view.element_size():][:nbytes]
    return torch.empty(0, dtype=view.dtype).set_(storage, 0, tuple(view.shape))


@dataclass
class LibraryState:
    """Everything the library file holds, in memory. Treat as immutable: every change makes a new state (feature
    every column lives in a shared append-only buffer, so appending does not copy the existing rows)."""

    model: str
    model_name: str
    dim: int
    ids: torch.Tensor  # int64 [N]
    files: TextColumn  # reads as a sequence of str; lists given here are made compact
    sha256: HashColumn  # uint8 [N, 32] inside; reads as a sequence of hex str
    added: torch.Tensor  # float64 [N]
    sizes: torch.Tensor  # int64 [N]
    names: TextColumn
    next_id: int = FIRST_ID
    _f16: Growable | None = field(default=None, repr=False, compare=False)  # the only copy of the rows: float16
    _grow: tuple[Growable, Growable, Growable] | None = field(default=None, repr=False, compare=False)  # ids, added,
    # sizes: the buffers those columns are the heads of (set by appended)
    _row_of: RowIndex | None = field(default=None, repr=False, compare=False)
    _id_of_hash: HashIndex | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.files = TextColumn.of(self.files)
        self.sha256 = HashColumn.of(self.sha256)
        self.names = TextColumn.of(self.names)

    @classmethod
    def empty(cls, model: str, model_name: str, dim: int) -> "LibraryState":
        """An empty library for this model."""
        return cls.build(model, model_name, dim, ids=torch.empty(0, dtype=torch.int64), features=torch.empty(0, dim),
                         files=[], sha256=[], added=torch.empty(0, dtype=torch.float64),
                         sizes=torch.empty(0, dtype=torch.int64), names=[])

    @classmethod
    def build(cls, model: str, model_name: str, dim: int, *, ids: torch.Tensor, features: torch.Tensor,
              files: Iterable[str], sha256: Iterable[str] | torch.Tensor, added: torch.Tensor, sizes: torch.Tensor,
              names: Iterable[str], next_id: int = FIRST_ID) -> "LibraryState":
        """A state from whole columns; features [N, D] are rounded to the stored precision (float16 rows, as a
        loaded file holds them, are kept as they are: no copy). Text columns are lists of str or TextColumns, hashes
        hex strings or uint8 [N, 32]."""
        if features.dtype == STORED_DTYPE and features.is_contiguous():
            f16 = Growable(features)  # adopted as it is: no copy, no spare room (the first append copies it)
        else:
            f16 = _growable(features.to(STORED_DTYPE))
        return cls(model=model, model_name=model_name, dim=dim, ids=ids, files=files, sha256=sha256, added=added,
                   sizes=sizes, names=names, next_id=next_id, _f16=f16)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def features(self) -> torch.Tensor:
        """Float32 unit rows [N, D] (exactly the stored float16 values): a new copy on every call, twice the
        memory of the rows (2 GB at a million rows of width 512), never kept. Library code works on features16,
        in chunks (float_chunks)."""
        return self.features16.float()

    def float_chunks(self, rows: int = 65_536) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, float32 rows [<=rows, D]) over the library: bounded memory for norms and similarities."""
        f16 = self.features16
        for start in range(0, len(f16), rows):
            yield start, f16[start:start + rows].float()

    @property
    def features16(self) -> torch.Tensor:
        """The rows as stored on disk: float16 [N, D]."""
        return self._f16.view(len(self))  # type: ignore[union-attr, return-value]

    @property
    def row_of(self) -> RowIndex:
        """ID -> row index (a read-only mapping searching the ascending IDs; made on first use)."""
        if self._row_of is None:
            self._row_of = RowIndex(self.ids)
        return self._row_of

    @property
    def id_of_hash(self) -> HashIndex:
        """Hex sha256 -> ID (the first ID with those bytes): a read-only mapping over the digests, made on first
        use (a sort of their 8-byte prefixes: 16 MB and about 0.1 s at a million rows)."""
        if self._id_of_hash is None:
            self._id_of_hash = HashIndex(self.sha256.digests, self.ids)
        return self._id_of_hash

    def appended(self, ids: Sequence[int], features: torch.Tensor, files: Sequence[str], sha256: Sequence[str],
                 sizes: Sequence[int], names: Sequence[str],
                 added: float | Sequence[float] | None = None) -> "LibraryState":
        """A new state with rows appended (features [M, D] are rounded to the stored precision), kept in ID order.
        Every column grows in place in buffers shared with this state when it is the newest state over them (O(M),
        amortised); else (a branch) they are copied once. This state keeps reading exactly its own rows.

        `added` is one unix time for all rows (default: now) or one per row.
        """
        if not ids:
            return self
        if added is None or isinstance(added, (int, float)):
            times = torch.full((len(ids),), time.time() if added is None else float(added), dtype=torch.float64)
        else:
            times = torch.as_tensor(list(added), dtype=torch.float64)
        new_ids = torch.tensor(list(ids), dtype=torch.int64)
        n, m = len(self), len(new_ids)
        _check_lengths(m, self.dim, features, files=files, sha256=sha256, sizes=sizes, names=names, added=times)
        rows16 = features.float().to(STORED_DTYPE)
        held = self._grow or (None, None, None)
        columns = [_holder(column, grow).extend(n, more) for column, grow, more in zip(
            (self.ids, self.added, self.sizes), held, (new_ids, times, torch.tensor(list(sizes), dtype=torch.int64)))]
        all_ids, all_added, all_sizes = (column.data[:n + m] for column in columns)  # type: ignore[index]
        state = replace(
            self, ids=all_ids, files=self.files.extended(files), sha256=self.sha256.extended(sha256),
            added=all_added, sizes=all_sizes, names=self.names.extended([clean_name(x) for x in names]),
            next_id=max(self.next_id, max(ids) + 1), _f16=self._f16.extend(n, rows16),  # type: ignore[union-attr]
            _grow=tuple(columns), _row_of=None, _id_of_hash=None)
        if (n and int(new_ids.min()) <= int(self.ids[-1])) or not _ascending(new_ids):
            return state.reordered(torch.argsort(state.ids, stable=True))
        if self._row_of is not None:  # still ascending: the index over the longer IDs needs no new check
            state._row_of = self._row_of.appended(state.ids)
        if self._id_of_hash is not None:  # the new digests join the index's small unsorted tail (no new sort)
            state._id_of_hash = self._id_of_hash.appended(state.sha256.digests, state.ids)
        return state

    def reordered(self, order: torch.Tensor) -> "LibraryState":
        """A copy with rows taken in this order (a permutation or a subset) [M]."""
        return self._taken(torch.as_tensor(order, dtype=torch.int64))

    def row_feature(self, image_id: int) -> torch.Tensor:
        """The feature row [D] of an ID as stored (float32 of the float16 row); KeyError when absent."""
        return self.features16[self.row_of[int(image_id)]].float()

    def without(self, ids: Sequence[int]) -> "LibraryState":
        """A copy without the rows of these IDs (next_id unchanged: IDs are never reused). Vectorised: a keep mask
        over the sorted IDs; only the float16 rows are copied (float32 rows are made when first used)."""
        drop = torch.tensor(sorted({int(i) for i in ids}), dtype=torch.int64)
        keep = ~sorted_member(self.ids, drop)  # [N] bool
        return self._taken(torch.nonzero(keep).flatten())

    def _taken(self, rows: torch.Tensor) -> "LibraryState":
        """A copy holding these rows [M]: the stored float16 rows are taken as they are, never converted; the text
        and hash columns are copied in runs of consecutive rows."""
        return LibraryState(
            model=self.model, model_name=self.model_name, dim=self.dim, ids=self.ids[rows],
            files=self.files.take(rows), sha256=self.sha256.take(rows), added=self.added[rows],
            sizes=self.sizes[rows], names=self.names.take(rows), next_id=self.next_id,
            _f16=_taken(self._f16, rows))  # type: ignore[arg-type]

    def with_rows(self, ids: Sequence[int], features: torch.Tensor, sha256: Sequence[str],
                  sizes: Sequence[int]) -> "LibraryState":
        """A copy where the rows of these IDs get new features [M, D], hashes and sizes (files stay)."""
        rows = [self.row_of[int(i)] for i in ids]
        f16 = self.features16.clone()
        f16[rows] = features.float().to(STORED_DTYPE)
        new_sizes = self.sizes.clone()
        for k, row in enumerate(rows):
            new_sizes[row] = int(sizes[k])
        return LibraryState.build(self.model, self.model_name, self.dim, ids=self.ids, features=f16,
                                  files=self.files, sha256=self.sha256.replaced(rows, list(sha256)),
                                  added=self.added, sizes=new_sizes, names=self.names, next_id=self.next_id)

    def to_dict(self) -> dict:
        """The dict that is saved: tensors and a few strings only, so that loading stays fast at 100k rows."""
        return {
            "version": FORMAT_VERSION, "model": self.model, "model_name": self.model_name, "dim": int(self.dim),
            "ids": _exact(self.ids.contiguous()), "features": _exact(self.features16),
            "files": self.files.joined(), "sha256": _exact(self.sha256.tensor()),
            "added": _exact(self.added.contiguous()), "sizes": _exact(self.sizes.contiguous()),
            "names": self.names.joined(),
            "next_id": int(self.next_id), "saved_at": time.time(),
        }


def invariant_problem(state: LibraryState) -> str | None:
    """The first broken invariant of a state, in words (None: sound): every column has one entry per row, the rows
    have the library's width, and IDs, file names and content hashes are each unique."""
    n = len(state.ids)
    counts = {"ids": n, "files": len(state.files), "sha256": len(state.sha256), "names": len(state.names),
              "added": len(state.added), "sizes": len(state.sizes), "features": int(state.features16.shape[0])}
    if len(set(counts.values())) != 1:
        return "its columns have different row counts (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")"
    if state.features16.dim() != 2 or int(state.features16.shape[1]) != int(state.dim):
        return f"its feature rows are {tuple(state.features16.shape[1:])} wide, but it says {state.dim}"
    ids = state.ids
    for what, column, find in (("ID", None, lambda: None if _ascending(ids) else _first_repeat(ids.tolist())),
                               ("file name", state.files, lambda: _first_repeat(state.files)),
                               ("content hash (sha256)", state.sha256, lambda: state.id_of_hash.first_repeat())):
        clash = find()  # ascending IDs all differ; hashes are compared by their sorted index
        if clash is not None:
            first, second = clash
            value = int(ids[first]) if column is None else column[first]
            return f"two rows share one {what} ({value}): IDs {int(ids[first])} and {int(ids[second])}"
    return None


def _check_lengths(m: int, dim: int, features: torch.Tensor, **columns: Sized) -> None:
    """ValueError unless features are [M, dim] and every other column holds M entries: checked before any shared
    buffer is written (a growable column is read up to the ID count, so a shorter one would read spare room)."""
    if features.dim() != 2 or tuple(features.shape) != (m, dim):
        raise ValueError(f"appending {m} rows needs features [{m}, {dim}], not {list(features.shape)}")
    for name, column in columns.items():
        if len(column) != m:
            raise ValueError(f"appending {m} rows needs {m} {name}, not {len(column)}")


def _first_repeat(values: Sequence[object]) -> tuple[int, int] | None:
    """(first position, repeat position) of the first value that occurs twice, else None."""
    if isinstance(values, TextColumn):
        values = values.tolist()
    if len(set(values)) == len(values):  # the usual case: one pass in C
        return None
    seen: dict[object, int] = {}
    for position, value in enumerate(values):
        if value in seen:
            return seen[value], position
        seen[value] = position
    return None  # pragma: no cover


def clean_name(name: str) -> str:
    """A display name fit for the newline-separated `names` column."""
    return " ".join(str(name).splitlines()) or "image"


def sorted_member(values: torch.Tensor, sorted_set: torch.Tensor) -> torch.Tensor:
    """Bool [N]: which values [N] occur in an ascending int64 tensor [M] (binary search; torch.isin is slow here)."""
    if len(sorted_set) == 0 or len(values) == 0:
        return torch.zeros(len(values), dtype=torch.bool)
    at = torch.searchsorted(sorted_set, values).clamp_max(len(sorted_set) - 1)
    return sorted_set[at] == values


def _ascending(ids: torch.Tensor) -> bool:
    return bool(len(ids) < 2 or bool((ids[1:] > ids[:-1]).all()))
