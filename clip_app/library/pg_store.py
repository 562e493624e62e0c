"""PostgresStore: the Store protocol over PostgreSQL + pgvector (`--library postgresql://USER@HOST:PORT/DB[?table=NAME]`).

The rows live in PostgreSQL (tables and SQL in pg_sql.py); the gallery folder stays on a filesystem every app server
mounts. Like the file store, each process keeps the current state in memory for the library's readers; it is read
once, then brought up to date by reading only what other writers changed (rows stored and IDs removed after the
version it holds: one metadata query when nothing changed). Readers never wait for a writer (MVCC snapshots).
Writers take a session advisory lock (one writer across threads, processes and machines; the server drops it when a
writer dies) and commit each change in one transaction: no journal, nothing half-written. Search uses the HNSW index
once the store has built it (above pg_sql.HNSW_MIN_ROWS rows), else the exact scan of the file store; HNSW
candidates are rescored in float32 like the file store's rows.
"""

from __future__ import annotations

import io
import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from ..label_sets import LabelSetError, LabelSetStore
from ..search import top_k
from .errors import LibraryCorruptError, LibraryWriteError
from .pg_companions import PgCompanions
from .pg_sql import TABLE_SUFFIXES, Meta, PgTables, is_database_url
from .state import LibraryState, sorted_member
from .tags import TagFile, tags_path

log = logging.getLogger(__name__)

LABEL_SETS_DOCUMENT = "label_sets"
TAGS_BLOB = "tags"  # the bytes a .tags file holds (library/tags.py)

__all__ = ["PgLabelSetStore", "PgTagFile", "PostgresStore", "is_database_url", "label_set_store", "tag_file"]


class PostgresStore:
    """The Store over one library's tables in PostgreSQL (see the module doc). `empty()` and `on_load(state)` as for
    FileStore: the state of a library never saved, and the check (or adoption) of every state read in full."""

    def __init__(self, url: str, empty: Callable[[], LibraryState],
                 on_load: Callable[[LibraryState], LibraryState] = lambda state: state,
                 lock_timeout: float = 300.0) -> None:
        self.tables = PgTables(url, lock_timeout=lock_timeout)  # StoreConnectionError: at once, clearly
        self.companions = PgCompanions(self.tables)  # label sets and tags, beside the rows
        self.location = self.tables.location.shown  # the URL with its password masked
        self._empty, self._on_load = empty, on_load
        self._lock = threading.RLock()
        self._write_mutex = threading.Lock()
        self._writer_active = False  # our writer holds the lock: the tables change only through it
        self._state: LibraryState | None = None
        self._version, self._generation = -1, ""
        if self.tables.meta() is not None:  # LibraryCorruptError: a table that is not a library
            self._load_all()
        if self._state is None:
            self._state = empty()

    # ---- reading --------------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self._version > 0

    def _load_all(self) -> None:
        meta, state, _ = self.tables.load()
        adopted = self._on_load(state)
        self._state, self._version, self._generation = adopted, meta.version, meta.generation
        if adopted is not state:
            self._version = 0  # an empty library of another model, taken over: the next save rewrites it

    def _refresh(self, meta: Meta | None = None) -> None:
        """Catch up with other writers: one metadata query (or the metadata given); then only the rows they stored
        and the IDs they removed (or everything, after a rebuild replaced the table)."""
        meta = meta if meta is not None else self.tables.meta()
        if meta is None:
            if self._version > 0:
                raise LibraryCorruptError(f"the library tables of {self.location} were dropped while in use")
            return
        if meta.generation != self._generation:
            self._load_all()
        elif meta.version != self._version and self._version >= 0:
            since, state = self._version, self._state
            _, rows, removed = self.tables.load(since=since)
            gone = sorted(set(removed) | set(rows.ids.tolist()))
            state = state.without(gone) if gone else state  # type: ignore[union-attr]
            if len(rows):
                state = state.appended(rows.ids.tolist(), rows.features16, rows.files, rows.sha256,
                                       rows.sizes.tolist(), rows.names, added=rows.added.tolist())
            state.next_id = max(state.next_id, meta.next_id)
            self._state, self._version = state, meta.version

    def current(self) -> LibraryState:
        with self._lock:
            if not self._writer_active:
                self._refresh()
            return self._state  # type: ignore[return-value]

    @contextmanager
    def writing(self) -> Iterator[LibraryState]:
        """One writer at a time (an advisory lock); the state is up to date inside. Readers go on meanwhile."""
        with self._write_mutex:
            if not self._generation and self.tables.meta() is None:  # a new library: its tables, stamped with the
                # running model
                state = self._state
                self.tables.create(state.model, state.model_name, state.dim, state.next_id)  # type: ignore[union-attr]
                meta = self.tables.meta()
                self._version, self._generation = 0, meta.generation  # type: ignore[union-attr]
            with self.tables.writing() as meta:  # the metadata as of the lock: every earlier write is visible
                with self._lock:
                    self._refresh(meta)
                    self._writer_active = True
                try:
                    yield self._state  # type: ignore[misc]
                finally:
                    with self._lock:
                        self._writer_active = False

    # ---- writing (inside writing()) ---------------------------------------------------------------------------
    def _done(self, state: LibraryState, version: int) -> LibraryState:
        with self._lock:
            self._state, self._version = state, version
            if version > 0 and not self._generation:
                self._generation = self.tables.meta().generation  # type: ignore[union-attr]
        return state

    def _stamp(self, state: LibraryState) -> dict[str, Any]:
        return dict(model=state.model, model_name=state.model_name, dim=state.dim, next_id=state.next_id)

    def append(self, ids: Sequence[int], features: torch.Tensor, files: Sequence[str], sha256: Sequence[str],
               sizes: Sequence[int], names: Sequence[str], next_id: int) -> LibraryState:
        old = self._state
        rows = LibraryState.empty(old.model, old.model_name, old.dim).appended(  # type: ignore[union-attr]
            list(ids), features, list(files), list(sha256), list(sizes), list(names))
        state = old.appended(list(ids), rows.features16, list(files), list(sha256), list(sizes),  # type: ignore
                             list(names), added=rows.added.tolist())
        state.next_id = max(state.next_id, int(next_id))
        return self._done(state, self.tables.apply(rows=rows, **self._stamp(state)))

    def remove(self, ids: Sequence[int]) -> LibraryState:
        state = self._state.without(list(ids))  # type: ignore[union-attr]
        return self._done(state, self.tables.apply(remove=list(ids), **self._stamp(state)))

    def save(self, state: LibraryState, compact: bool = False) -> None:
        """Write the difference from the stored state in one transaction: a library of another model or width
        replaces the table (rebuild); otherwise removed IDs, new rows and (compact, as repair saves) rows whose
        bytes or features changed."""
        old = self._state
        if state.model != old.model or state.dim != old.dim or self._version <= 0:  # type: ignore[union-attr]
            version = self.tables.apply(rows=state, replace_all=True, **self._stamp(state))
            with self._lock:
                self._generation = self.tables.meta().generation  # type: ignore[union-attr]
            self._done(state, version)
            return
        removed = old.ids[~sorted_member(old.ids, state.ids)].tolist()  # type: ignore[union-attr]
        new = ~sorted_member(state.ids, old.ids)  # type: ignore[union-attr]
        common = torch.nonzero(~new).flatten()
        if compact and len(common):
            old_rows = torch.searchsorted(old.ids, state.ids[common])  # type: ignore[union-attr]
            hashes_differ = torch.tensor([state.sha256[r] != old.sha256[o]  # type: ignore[union-attr]
                                          for r, o in zip(common.tolist(), old_rows.tolist())], dtype=torch.bool)
            rows_differ = (state.features16[common] != old.features16[old_rows]).any(dim=1)  # type: ignore
            new[common[hashes_differ | rows_differ]] = True
        write = torch.nonzero(new).flatten()
        changed = state.ids[write][sorted_member(state.ids[write], old.ids)].tolist()  # type: ignore[union-attr]
        version = self.tables.apply(remove=removed + changed, rows=state.reordered(write) if len(write) else None,
                                    **self._stamp(state))
        self._done(state, version)

    # ---- search, usage, companion data ------------------------------------------------------------------------
    def search(self, state: LibraryState, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [k'], ids [k']): the HNSW index (rescored exactly) once it exists, else the exact scan of the
        rows in memory; hits newer than `state` are left out (the next search has them)."""
        if not self.tables.has_index(max_age=10.0):
            scores, rows = top_k(query, state.features16, state.ids, k)
            return scores, state.ids[rows]
        ids, scores = self.tables.search(query, k)
        keep = [i for i, image_id in enumerate(ids) if image_id in state.row_of]
        return (torch.tensor([scores[i] for i in keep], dtype=torch.float32),
                torch.tensor([ids[i] for i in keep], dtype=torch.int64))

    def nearest(self, state: LibraryState, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(ids [M], similarities [M]) of the stored row nearest each unit row [M, D] by the HNSW index (the
        near-duplicate test of add: one query for the batch); None below the index's size (then the library scans
        the rows in memory)."""
        if not self.tables.has_index(max_age=10.0):
            return None
        ids, sims = self.tables.nearest(rows)
        return torch.tensor(ids, dtype=torch.int64), torch.tensor(sims, dtype=torch.float32)

    def usage(self) -> dict:
        size = self.tables._reader().execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c WHERE c.relname = ANY(%s) AND "
            "c.relkind = 'r'", ([self.tables.table + s for s in TABLE_SUFFIXES],)).fetchone()[0]
        return {"file_size": int(size), "journal_size": 0, "journal_file": None}

    def companion_path(self, name: str) -> Path | None:
        return None  # companion data live in the <table>_docs and <table>_blobs tables (self.companions)

    def documents(self) -> dict[str, Any]:
        """Every companion: JSON documents (label sets) and binary ones (tags, as bytes) by name."""
        return {**self.companions.documents(), **self.companions.blobs_all()}

    def close(self) -> None:
        """Close the connections."""
        self.tables.close()


class PgLabelSetStore(LabelSetStore):
    """Label sets kept as a companion document of a PostgreSQL library (the JSON of label_sets.json)."""

    def __init__(self, companions: PgCompanions) -> None:
        super().__init__(Path(f"{companions.location} ({LABEL_SETS_DOCUMENT})"))
        self.companions = companions

    def _read_document(self) -> dict | None:
        """The label sets document of the library (the JSON of label_sets.json), or None."""
        return self.companions.get_document(LABEL_SETS_DOCUMENT)

    def _write_document(self, document: dict) -> None:
        try:
            self.companions.put_document(LABEL_SETS_DOCUMENT, document)
        except Exception as exc:
            raise LabelSetError(f"the label sets could not be saved: {exc}") from None


class PgTagFile(TagFile):
    """The tags of a PostgreSQL library: the bytes of a .tags file, kept as the blob `tags` in `<table>_blobs`."""

    def __init__(self, companions: PgCompanions) -> None:
        self.companions = companions
        self.path = None
        self.name = f"{companions.blobs} ({TAGS_BLOB})"
        self.where = f"the tags of the library {companions.location} (table {companions.blobs})"
        self._cache = None

    def _stamp(self) -> object | None:
        return self.companions.blob_stamp(TAGS_BLOB)

    def _raw(self) -> object:
        found = self.companions.get_blob(TAGS_BLOB)
        if found is None:
            raise FileNotFoundError("they were deleted while being read")
        return torch.load(io.BytesIO(found[0]), map_location="cpu", weights_only=True)

    def _write(self, data: dict) -> object:
        buffer = io.BytesIO()
        torch.save(data, buffer)
        try:
            return self.companions.put_blob(TAGS_BLOB, buffer.getvalue())
        except Exception as exc:  # psycopg's errors: the tags were not saved, nothing changed
            raise LibraryWriteError(f"could not save {self.where}: {exc}") from None


def _companions(library: Any, location: Path | str) -> PgCompanions | None:
    """The companion tables of a PostgreSQL library (its store's, else a connection to `location` that reads no
    rows); None for a file library."""
    store = getattr(library, "store", None)
    if isinstance(store, PostgresStore):
        return store.companions
    if is_database_url(str(location)):
        return PgCompanions(PgTables(str(location)))
    return None


def label_set_store(library: Any, location: Path | str) -> LabelSetStore:
    """The label sets of a library (a FeatureLibrary, or None with the --library value): a document in its
    PostgreSQL tables, else label_sets.json beside the file."""
    companions = _companions(library, location)
    if companions is not None:
        return PgLabelSetStore(companions)
    from ..label_sets import default_label_sets_file

    return LabelSetStore(default_label_sets_file(Path(location)))


def tag_file(library: Any, location: Path | str) -> TagFile:
    """The tags of a library (a FeatureLibrary, or None with the --library value): a blob in its PostgreSQL tables,
    else the .tags file beside the library file."""
    companions = _companions(library, location)
    return PgTagFile(companions) if companions is not None else TagFile(tags_path(Path(location)))
