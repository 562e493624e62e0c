"""LibraryState: the library's rows in memory (ids, features, files, hashes, ...), never changed once made; appends
share column buffers so a new state costs no copy of the existing rows. Text and hash columns are compact
(columns.py): no Python object per row."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, Sequence

import torch

from .columns import HashColumn, TextColumn
from .lookups import HashIndex, RowIndex

FORMAT_VERSION = 1
FIRST_ID = 1
STORED_DTYPE = torch.float16


class _Column:
    """A growable row buffer [capacity, D] shared by successive states: appending to the newest state writes in
    place (no copy of the existing rows); older states keep their own views of the first rows, which never change."""

    def __init__(self, data: torch.Tensor, filled: int) -> None:
        self.data = data
        self.filled = filled

    @classmethod
    def adopt(cls, rows: torch.Tensor) -> "_Column":
        """A column over these rows as they are (no copy, no spare room: the first append copies them)."""
        return cls(rows, len(rows))

    @classmethod
    def of(cls, rows: torch.Tensor, dtype: torch.dtype) -> "_Column":
        """A column holding these rows (converted to dtype), with room to append without copying."""
        n = len(rows)
        data = torch.empty((n + _slack(n),) + tuple(rows.shape[1:]), dtype=dtype)
        data[:n] = rows
        return cls(data, n)

    def view(self, n: int) -> torch.Tensor:
        return self.data[:n]

    def extend(self, n: int, rows: torch.Tensor) -> "_Column":
        """A column holding our first n rows followed by `rows` (in place when this column ends at row n)."""
        m = len(rows)
        if self.filled == n and n + m <= len(self.data):
            self.data[n:n + m] = rows
            self.filled = n + m
            return self
        capacity = n + m + _slack(n + m)
        data = torch.empty((capacity,) + tuple(rows.shape[1:]), dtype=rows.dtype)
        data[:n] = self.data[:n]
        data[n:n + m] = rows
        return _Column(data, n + m)

    def take(self, index: torch.Tensor) -> "_Column":
        """A new column holding our rows at these positions [M], in that order (no conversion of the values): runs
        of consecutive positions (what removing a few rows leaves) are copied as blocks, else gathered."""
        m = len(index)
        data = torch.empty((m + _slack(m),) + tuple(self.data.shape[1:]), dtype=self.data.dtype)
        if m:
            breaks = (torch.nonzero(index[1:] != index[:-1] + 1).flatten() + 1).tolist()
            if len(breaks) <= MAX_COPY_RUNS:
                for start, stop in zip([0] + breaks, breaks + [m]):
                    first = int(index[start])
                    data[start:stop] = self.data[first:first + stop - start]
            else:
                torch.index_select(self.data, 0, index, out=data[:m])
        return _Column(data, m)


MAX_COPY_RUNS = 256  # Column.take copies up to this many blocks one by one; more are gathered with index_select


MAX_SLACK_ROWS = 32_768  # at most 32 MB of spare float16 rows of width 512 (n/8 was 128 MB at a million rows)


def _slack(n: int) -> int:
    """Spare rows kept after n rows: appends copy the buffer only every n/8 rows (amortised O(1) per row), at most
    every MAX_SLACK_ROWS rows for big libraries (a copy of 1 GB per 32,768 rows added stays cheap per row)."""
    return min(max(256, n // 8), MAX_SLACK_ROWS)


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
    rows live in shared append-only buffers, so appending does not copy the existing rows)."""

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
    _f16: _Column | None = field(default=None, repr=False, compare=False)  # the only copy of the rows: float16
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
            f16 = _Column.adopt(features)
        else:
            f16 = _Column.of(features.to(STORED_DTYPE), STORED_DTYPE)
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
        return self._f16.view(len(self))  # type: ignore[union-attr]

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
        """A copy with rows appended (features [M, D] are rounded to the stored precision), kept in ID order.

        `added` is one unix time for all rows (default: now) or one per row.
        """
        if not ids:
            return self
        if added is None or isinstance(added, (int, float)):
            times = torch.full((len(ids),), time.time() if added is None else float(added), dtype=torch.float64)
        else:
            times = torch.as_tensor(list(added), dtype=torch.float64)
        new_ids = torch.tensor(list(ids), dtype=torch.int64)
        n = len(self)
        rows16 = features.float().to(STORED_DTYPE)
        state = replace(
            self, ids=torch.cat([self.ids, new_ids]), files=self.files.extended(files),
            sha256=self.sha256.extended(sha256), added=torch.cat([self.added, times]),
            sizes=torch.cat([self.sizes, torch.tensor(list(sizes), dtype=torch.int64)]),
            names=self.names.extended([clean_name(x) for x in names]), next_id=max(self.next_id, max(ids) + 1),
            _f16=self._f16.extend(n, rows16), _row_of=None, _id_of_hash=None)  # type: ignore[union-attr]
        if (n and int(new_ids.min()) < int(self.ids[-1])) or not _ascending(new_ids):
            state = state.reordered(torch.argsort(state.ids))
        elif self._id_of_hash is not None:  # merge the new digests into the sorted index (no new sort)
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
            _f16=self._f16.take(rows))  # type: ignore[union-attr]

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
            "ids": self.ids.contiguous(), "features": _exact(self.features16),
            "files": self.files.joined(), "sha256": _exact(self.sha256.tensor()),
            "added": self.added.contiguous(), "sizes": self.sizes.contiguous(), "names": self.names.joined(),
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
