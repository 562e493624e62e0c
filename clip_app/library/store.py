"""Where the library lives on disk: the main file plus a small journal of recent adds and removes.

Rewriting a 100,000-row main file (110 MB) for every added image costs a full write and fsync of the file (about
0.5 s on a slow disk), so small changes go to a journal next to it, ``<library_file>.journal``, a plain dict that
also loads with ``torch.load(..., weights_only=True)``:

    version, kind="journal", base (the main file's `generation`), model, dim,
    ids, features, files, sha256, added, sizes, names (the rows added since the main file was written, same
    encoding as the main file), removed (int64 [R], IDs of the main file that were removed since), next_id

The library is the main file with the journal applied. The journal is ignored when its `base` is not the main
file's `generation` (a crash after a compaction replaced the main file but before the old journal was deleted, or
a main file restored from a backup): the main file is then the whole truth. Every save is atomic (temp file,
fsync, os.replace). When the journal grows past max(COMPACT_MIN_ROWS, N / COMPACT_FRACTION) entries, or on
repair/rebuild/first run, the whole library is written as a new main file with a new generation (the compaction)
and the journal is deleted.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Protocol, Sequence, runtime_checkable

import filelock
import torch

from ..files import file_signature, fsync_dir
from ..search import top_k
from .errors import LibraryBusyError, LibraryCorruptError, LibraryWriteError
from .fileformat import JOURNAL_RECOVERY, load_raw, parse_state, save_state
from .state import LibraryState, invariant_problem, sorted_member

log = logging.getLogger(__name__)

LABEL_SETS_NAME = "label_sets.json"  # the App's saved label sets, kept beside the library file (label_sets.py)
COMPACT_MIN_ROWS = 2048
COMPACT_FRACTION = 20  # compact when the journal holds more than N / 20 entries (and more than COMPACT_MIN_ROWS)

Signature = tuple[tuple[int, int, int] | None, tuple[int, int, int] | None]


def journal_path(path: Path) -> Path:
    """The journal file of a library file: features_library.pth -> features_library.pth.journal."""
    return path.with_name(path.name + ".journal")


def lock_path(path: Path) -> Path:
    """The lock file of a library file: features_library.pth -> features_library.pth.lock."""
    return path.with_name(path.name + ".lock")


def companion_files(path: Path) -> list[Path]:
    """The library file and the files that live beside it: its lock, its journal and the label sets file. None of
    them belongs to the gallery when the library file lies in the gallery folder, and none is ever served."""
    return [path, lock_path(path), journal_path(path), path.with_name(LABEL_SETS_NAME)]


def signature(path: Path) -> Signature:
    """(main file, journal) signatures: any change means another writer saved."""
    return file_signature(path), file_signature(journal_path(path))


@dataclass
class OnDisk:
    """What the main file holds, as last read or written: its generation and its IDs."""

    generation: str
    base_ids: torch.Tensor  # int64 [B]
    model: str
    journal_entries: int = 0


def load_library(path: Path) -> tuple[LibraryState, OnDisk]:
    """Main file + journal -> the library state; LibraryCorruptError when either cannot be read (left untouched)."""
    raw = load_raw(path)
    state = parse_state(raw, path)
    generation = str(raw.get("generation", ""))
    on_disk = OnDisk(generation=generation, base_ids=state.ids.clone(), model=state.model)
    journal_file = journal_path(path)
    try:
        journal = load_raw(journal_file, "feature library journal", JOURNAL_RECOVERY)
    except FileNotFoundError:
        return state, on_disk
    if not generation or journal.get("base") != generation:
        log.warning("ignoring the stale journal %s: it belongs to another version of %s", journal_file, path)
        return state, on_disk
    added = parse_state(journal, journal_file, "feature library journal", JOURNAL_RECOVERY)
    removed = journal.get("removed")
    if not isinstance(removed, torch.Tensor) or removed.dtype != torch.int64 or removed.dim() != 1:
        raise LibraryCorruptError(f"the feature library journal {journal_file} is not valid ('removed' must be an "
                                  f"int64 tensor [R]); it was left untouched. {JOURNAL_RECOVERY}")
    if added.model != state.model or added.dim != state.dim:
        raise LibraryCorruptError(f"the feature library journal {journal_file} was written for model {added.model} "
                                  f"but {path} holds {state.model}; both were left untouched. {JOURNAL_RECOVERY}")
    clash = set(added.ids.tolist()) & set(state.ids.tolist())
    if clash:
        raise LibraryCorruptError(f"the feature library journal {journal_file} adds IDs that {path} already holds "
                                  f"({sorted(clash)[:5]}); both were left untouched. {JOURNAL_RECOVERY}")
    if len(removed):
        state = state.without(removed.tolist())
    state = state.appended(added.ids.tolist(), added.features16, added.files, added.sha256, added.sizes.tolist(),
                           added.names, added=added.added.tolist())
    state.next_id = max(state.next_id, added.next_id)
    problem = invariant_problem(state)  # e.g. a journal row naming a file or holding bytes the main file has
    if problem:
        raise LibraryCorruptError(f"the feature library journal {journal_file} does not fit {path}: together {problem};"
                                  f" both were left untouched. {JOURNAL_RECOVERY}")
    on_disk.journal_entries = len(added) + len(removed)
    return state, on_disk


def save_library(state: LibraryState, path: Path, on_disk: OnDisk | None, compact: bool = False) -> OnDisk:
    """Save the state: as a journal against the main file when that is small, else as a new main file."""
    if (not compact and on_disk is not None and on_disk.generation and on_disk.model == state.model
            and file_signature(path) is not None):
        base = on_disk.base_ids
        if len(state) >= len(base) and torch.equal(state.ids[:len(base)], base):  # only appends: the usual case
            new_rows = torch.arange(len(base), len(state))
            removed = torch.empty(0, dtype=torch.int64)
        else:
            new_rows = torch.nonzero(~sorted_member(state.ids, base)).flatten()
            removed = base[~sorted_member(base, state.ids)]
        entries = len(new_rows) + len(removed)
        limit = max(COMPACT_MIN_ROWS, len(state) // COMPACT_FRACTION)
        if entries <= limit:
            journal = state.reordered(new_rows) if len(new_rows) else LibraryState.empty(state.model,
                                                                                         state.model_name, state.dim)
            journal.next_id = state.next_id
            save_state(journal, journal_path(path), {"kind": "journal", "base": on_disk.generation,
                                                     "removed": removed.contiguous()})
            return OnDisk(on_disk.generation, on_disk.base_ids, on_disk.model, entries)
    generation = uuid.uuid4().hex
    save_state(state, path, {"generation": generation})
    stale = journal_path(path)
    try:
        os.unlink(stale)  # it no longer matches the main file, so it would be ignored anyway
        fsync_dir(stale.parent)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not delete the old journal %s (%s); it is ignored", stale, exc)
    return OnDisk(generation, state.ids.clone(), state.model, 0)



@runtime_checkable
class Store(Protocol):
    """What FeatureLibrary needs from persistence (the .pth + journal FileStore here; PostgreSQL + pgvector:
    pg_store.PostgresStore).

    Readers call current() and never wait for a writer. Every change happens inside `with store.writing() as
    state:` (one writer across threads and processes; `state` is fresh from the store), through append, remove or
    save (a whole new state: repair, rebuild, first run). The state carries the metadata: model stamp (`model`,
    `model_name`, `dim`) and `next_id`, which only grows."""

    location: str  # where the rows live, for messages: a file path, a database URL

    def exists(self) -> bool:
        """True when the store holds a saved library (as of the last read or write)."""

    def current(self) -> LibraryState:
        """The newest committed state (another process's saves included); never waits for a writer."""

    def writing(self) -> ContextManager[LibraryState]:
        """The write section: one writer at a time; yields the fresh state; LibraryBusyError after the timeout."""

    def append(self, ids: Sequence[int], features: torch.Tensor, files: Sequence[str], sha256: Sequence[str],
               sizes: Sequence[int], names: Sequence[str], next_id: int) -> LibraryState:
        """Inside writing(): add rows [M, D] under new ascending IDs; return the new state."""

    def remove(self, ids: Sequence[int]) -> LibraryState:
        """Inside writing(): drop these IDs' rows (IDs are never reused); return the new state."""

    def save(self, state: LibraryState, compact: bool = False) -> None:
        """Inside writing(): make `state` the library (compact: rewrite it whole, e.g. after repair or rebuild)."""

    def search(self, state: LibraryState, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [k'], ids [k']) of the rows of `state` most similar to a unit query [D], best first, ties to the
        lower ID, k' = min(k, N) (a database store answers from its own index, rescored exactly)."""

    def usage(self) -> dict:
        """Bytes at rest: file_size (everything), journal_size, journal_file (or None where not applicable)."""

    def companion_path(self, name: str) -> Path | None:
        """Where companion data named `name` (label sets, ...) lives beside the rows; None when the store keeps it
        elsewhere."""


#: after loading a library of at least this many rows, the memory the loading freed is handed back to the system
TRIM_ROWS = 100_000


def return_freed_memory() -> None:
    """Hand memory freed by a big load (torch.load's buffers, the text columns' temporaries) back to the system:
    glibc keeps it in the process otherwise (about 65 MB at a million rows). Elsewhere, nothing happens."""
    import ctypes
    import gc

    gc.collect()
    try:
        trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # the process's own symbols: glibc's allocator
    except (OSError, TypeError):  # pragma: no cover - a platform without dlopen(NULL)
        return
    if trim is not None:
        trim(0)


class FileStore:
    """The Store over features_library.pth + its journal + its lock file (see the module docstring).

    `empty()` is the state of a library never saved (the running model's stamp); `on_load(state)` sees every state
    read from disk and may raise (a foreign model) or return another state (an empty library adopted by the
    running model: then the next save writes a whole main file)."""

    def __init__(self, path: Path | str, empty: Callable[[], LibraryState],
                 on_load: Callable[[LibraryState], LibraryState] = lambda state: state,
                 lock_timeout: float = 300.0) -> None:
        self.path = Path(path).expanduser().absolute()
        self.location = str(self.path)
        self._empty, self._on_load = empty, on_load
        self._lock = threading.RLock()  # the in-memory state: held only to reload it or swap it, never for long
        self._write_mutex = threading.Lock()  # one writer at a time in this process, for the whole write
        self._writer_holds_file_lock = False  # then only our writer changes the file: readers need not reload it
        self._file_lock = filelock.FileLock(str(lock_path(self.path)), timeout=lock_timeout)
        self._signature: Signature | None = None
        self._on_disk: OnDisk | None = None
        self._state: LibraryState | None = None
        if file_signature(self.path) is not None:
            self._load()
        if self._state is None:  # no saved library: the empty one (its width may need the model loaded)
            self._state = empty()

    def exists(self) -> bool:
        return self._signature is not None and self._signature[0] is not None

    def _load(self) -> None:
        """Read the file into memory (retrying when it is replaced while being read)."""
        for _ in range(5):
            before = signature(self.path)
            if before[0] is None:
                return  # deleted meanwhile: keep what is in memory
            state, on_disk = load_library(self.path)
            if signature(self.path) == before:
                break
        adopted = self._on_load(state)
        if adopted is not state:
            on_disk = None  # the next save writes a whole file
        previous = self._state
        self._state, self._signature, self._on_disk = adopted, before, on_disk
        del previous, state
        if len(adopted) >= TRIM_ROWS:
            return_freed_memory()


    def _refresh(self) -> None:
        """Reload when another process saved the file since we last read or wrote it."""
        now = signature(self.path)
        if now == self._signature:
            return
        if now[0] is None:
            if self._signature is not None and self._signature[0] is not None:
                log.warning("the feature library %s disappeared; keeping the %d rows in memory (saved in full on "
                            "the next change)", self.path, len(self._state))
            self._signature, self._on_disk = now, None
            return
        self._load()

    def current(self) -> LibraryState:
        with self._lock:
            if not self._writer_holds_file_lock:  # else the file changes only through our writer's save
                self._refresh()
            return self._state

    @contextmanager
    def writing(self) -> Iterator[LibraryState]:
        """One writer at a time (threads and processes); the state is fresh from disk inside. Readers go on
        meanwhile: they see the previous state until save swaps in the new one."""
        with self._write_mutex:
            self._check_lock_file()
            try:
                self._file_lock.acquire()
            except filelock.Timeout:
                raise LibraryBusyError(f"the feature library {self.path} is locked by another process "
                                       f"(lock file {self._file_lock.lock_file}); try again later") from None
            except OSError as exc:
                raise self._lock_file_error(exc) from None
            try:
                with self._lock:
                    self._refresh()
                    self._writer_holds_file_lock = True
                try:
                    yield self._state
                finally:
                    with self._lock:
                        self._writer_holds_file_lock = False
            finally:
                self._file_lock.release()

    def _check_lock_file(self) -> None:
        """Create the lock file (and its folder) if needed: a file that cannot be created is an error now, not a
        lock that seems held by someone else until the timeout."""
        path = lock_path(self.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o644))
        except OSError as exc:
            raise self._lock_file_error(exc) from None

    def _lock_file_error(self, exc: OSError) -> LibraryWriteError:
        path = lock_path(self.path)
        return LibraryWriteError(f"cannot write to the feature library {self.path}: its lock file {path} "
                                 f"cannot be created or opened ({exc.strerror or exc}); the folder {path.parent} "
                                 "must exist (or be creatable) and be writable")

    def append(self, ids: Sequence[int], features: torch.Tensor, files: Sequence[str], sha256: Sequence[str],
               sizes: Sequence[int], names: Sequence[str], next_id: int) -> LibraryState:
        state = self._state.appended(list(ids), features, list(files), list(sha256), list(sizes), list(names))
        state.next_id = max(state.next_id, int(next_id))
        self.save(state)
        return state

    def remove(self, ids: Sequence[int]) -> LibraryState:
        state = self._state.without(list(ids))
        self.save(state)
        return state

    def save(self, state: LibraryState, compact: bool = False) -> None:
        """Save atomically: small changes into the journal, else (or when compact) a whole new main file. Called by
        the writer holding the file lock; readers see the new state from the moment it is on disk."""
        on_disk = save_library(state, self.path, self._on_disk, compact=compact)
        saved = signature(self.path)
        with self._lock:
            self._on_disk, self._state, self._signature = on_disk, state, saved

    def search(self, state: LibraryState, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        scores, rows = top_k(query, state.features16, state.ids, k)  # the float16 rows: half the bytes to scan
        return scores, state.ids[rows]

    def usage(self) -> dict:
        main, journal = signature(self.path)
        return {"file_size": (main[2] if main else 0) + (journal[2] if journal else 0),
                "journal_size": journal[2] if journal else 0, "journal_file": str(journal_path(self.path))}

    def companion_path(self, name: str) -> Path | None:
        return self.path.with_name(name)
