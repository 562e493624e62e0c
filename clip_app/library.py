"""FeatureLibrary: the gallery folder and features_library.pth, joined by a shared integer image ID.

Safety rules (see also library_file.py for the file format and gallery.py for file naming):
- Every write takes the writers' mutex and a file lock (``<library_file>.lock``), reloads the file first when
  another process changed it, and saves once, atomically (temp file, fsync, os.replace). Until os.replace the old
  file is the valid library.
- Reads never wait for a writer: a state is never changed once made, so a read only takes the state lock for the
  moment it needs to reload a file another process saved, or to pick up the state a writer swapped in. No lock is
  held while images are encoded, and the state lock is never held while waiting for the file lock.
- Adding: the image file is written first (``gallery/000042.jpg``, original bytes), then the row is saved; if the
  save fails the new files are removed again. Removing: the row is saved first, then the file is deleted. A crash in
  between leaves an image file without a row, which `check` reports and `repair` indexes: no image is ever lost.
- IDs are never reused (``next_id`` in the file only grows). Bytes already in the library are a duplicate: the
  existing ID is returned and nothing is stored.
- A library file of another model raises ModelMismatchError; an unreadable one raises LibraryCorruptError and is
  never overwritten.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Union

import filelock
import torch

from . import gallery as gal
from .encoders import ClipEncoder
from .images import ImageError, decode_image, image_extension, read_bytes
from .library_file import (
    LibraryBusyError,
    LibraryCorruptError,
    LibraryError,
    LibraryState,
    LibraryWriteError,
    ModelMismatchError,
    UnknownImageError,
    file_signature,
    fsync_dir,
    sorted_member,
)
from .library_maintenance import LibraryMaintenance, Progress, _Batcher, _Candidate, sha256_bytes
from .library_reports import (
    PROBLEM_KINDS,
    AddReport,
    AddResult,
    CheckReport,
    Entry,
    Problem,
    RebuildReport,
    RepairReport,
    index_command,
)
from .library_store import (
    OnDisk,
    Signature,
    companion_files,
    journal_path,
    load_library,
    lock_path,
    save_library,
    signature,
)
from .search import Scan, scan, top_k

__all__ = [
    "PROBLEM_KINDS", "AddReport", "AddResult", "CheckReport", "Entry", "FeatureLibrary", "LibraryBusyError",
    "LibraryCorruptError", "LibraryError", "LibraryWriteError", "ModelMismatchError", "Problem", "RebuildReport",
    "RepairReport", "UnknownImageError", "private_paths",
]

log = logging.getLogger(__name__)

Item = Union[Path, str, bytes, bytearray, tuple]


class FeatureLibrary(LibraryMaintenance):
    """Gallery images and their CLIP features under shared integer IDs; thread- and process-safe."""

    def __init__(self, gallery_dir: Path | str, library_file: Path | str, encoder: ClipEncoder,
                 near_duplicate_threshold: float = 0.97, batch_size: int = 32, *, check_model: bool = True,
                 lock_timeout: float = 300.0) -> None:
        self.gallery_dir = Path(gallery_dir).expanduser().absolute()
        self.library_file = Path(library_file).expanduser().absolute()
        self.encoder = encoder
        self.near_duplicate_threshold = float(near_duplicate_threshold)
        self.batch_size = max(1, int(batch_size))
        self._check_model = check_model
        self._lock = threading.RLock()  # the in-memory state: held only to reload it or swap it, never for long
        self._write_mutex = threading.Lock()  # one writer at a time in this process, for the whole write
        self._writer_holds_file_lock = False  # then only our writer changes the file: readers need not reload it
        self._file_lock = filelock.FileLock(str(lock_path(self.library_file)), timeout=lock_timeout)
        self._signature: Signature | None = None
        self._on_disk: OnDisk | None = None
        self._state: LibraryState = None  # type: ignore[assignment]  # set by _open
        self.first_run_report: RepairReport | None = None
        self._open()

    @classmethod
    def open_for_rebuild(cls, gallery_dir: Path | str, library_file: Path | str, encoder: ClipEncoder,
                         **kwargs: object) -> "FeatureLibrary":
        """Open without the model check (for rebuild and check); add/search refuse until rebuild() ran."""
        return cls(gallery_dir, library_file, encoder, check_model=False, **kwargs)  # type: ignore[arg-type]

    # ---- opening, refreshing, locking -------------------------------------------------------------------
    def _open(self) -> None:
        """Load the file; without one, index the gallery (the only case where opening needs the model itself:
        list, stats, check and remove of an existing library work with its identity alone)."""
        if file_signature(self.library_file) is not None:
            self._load()
            if self._state is not None:
                return
        self._state = LibraryState.empty(self.encoder.identity, self.encoder.name, self.encoder.dim)
        with self._writing():  # first run: index the gallery (once, even when two processes start together)
            if self._signature is not None and self._signature[0] is not None:
                return  # another process created the file meanwhile; _writing() loaded it
            scan = self._scan()
            if scan.id_files or any(gal.has_image_extension(n) for n in scan.foreign):
                log.info("no feature library at %s: indexing the gallery %s", self.library_file, self.gallery_dir)
                report = RepairReport()
                state = self._index_files(self._state, self._candidates_from_scan((), scan), report, self._reader(),
                                          quarantine_rest=False)
                self._save(state, compact=True)
                self.first_run_report = report
                log.info("indexed %d gallery images into %s", len(report.indexed), self.library_file)

    def _load(self) -> None:
        """Read the file into memory (retrying when it is replaced while being read); checks the model."""
        for _ in range(5):
            before = signature(self.library_file)
            if before[0] is None:
                return  # deleted meanwhile: keep what is in memory
            state, on_disk = load_library(self.library_file)
            if signature(self.library_file) == before:
                break
        if state.model != self.encoder.identity and len(state) == 0 and self._check_model:
            log.info("the empty library %s was made by %s; it now belongs to %s", self.library_file,
                     state.model, self.encoder.identity)
            fresh = LibraryState.empty(self.encoder.identity, self.encoder.name, self.encoder.dim)
            fresh.next_id = state.next_id
            state, on_disk = fresh, None  # the next save writes a whole file under the new model
        if self._check_model:
            self._require_model(state)
        self._state, self._signature, self._on_disk = state, before, on_disk

    def _refresh(self) -> None:
        """Reload when another process saved the file since we last read or wrote it."""
        now = signature(self.library_file)
        if now == self._signature:
            return
        if now[0] is None:
            if self._signature is not None and self._signature[0] is not None:
                log.warning("the feature library %s disappeared; keeping the %d rows in memory (saved in full on "
                            "the next change)", self.library_file, len(self._state))
            self._signature, self._on_disk = now, None
            return
        self._load()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One writer at a time (threads and processes); the state is fresh from disk inside. Readers go on
        meanwhile: they see the previous state until _save swaps in the new one."""
        with self._write_mutex:
            self._check_lock_file()
            try:
                self._file_lock.acquire()
            except filelock.Timeout:
                raise LibraryBusyError(f"the feature library {self.library_file} is locked by another process "
                                       f"(lock file {self._file_lock.lock_file}); try again later") from None
            except OSError as exc:
                raise self._lock_file_error(exc) from None
            try:
                with self._lock:
                    self._refresh()
                    self._writer_holds_file_lock = True
                try:
                    yield
                finally:
                    with self._lock:
                        self._writer_holds_file_lock = False
            finally:
                self._file_lock.release()

    def _check_lock_file(self) -> None:
        """Create the lock file (and its folder) if needed: a file that cannot be created is an error now, not a
        lock that seems held by someone else until the timeout."""
        path = lock_path(self.library_file)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o644))
        except OSError as exc:
            raise self._lock_file_error(exc) from None

    def _lock_file_error(self, exc: OSError) -> LibraryWriteError:
        path = lock_path(self.library_file)
        return LibraryWriteError(f"cannot write to the feature library {self.library_file}: its lock file {path} "
                                 f"cannot be created or opened ({exc.strerror or exc}); the folder {path.parent} "
                                 "must exist (or be creatable) and be writable")

    def _current(self) -> LibraryState:
        """The newest state (reloaded when another process saved the file); never waits for a writer."""
        with self._lock:
            if not self._writer_holds_file_lock:  # else the file changes only through our writer's _save
                self._refresh()
            return self._state

    def _save(self, state: LibraryState, compact: bool = False) -> None:
        """Save atomically: small changes into the journal, else (or when compact) a whole new main file. Called by
        the writer holding the file lock; readers see the new state from the moment it is on disk."""
        on_disk = save_library(state, self.library_file, self._on_disk, compact=compact)
        saved = signature(self.library_file)
        with self._lock:
            self._on_disk, self._state, self._signature = on_disk, state, saved

    def _require_model(self, state: LibraryState) -> None:
        """ModelMismatchError unless the state was made by the running model; LibraryCorruptError when it says so
        but its width is not the model's (checked once the model is loaded: see index.LazyEncoder)."""
        if state.model != self.encoder.identity:
            raise ModelMismatchError(state.model, self.encoder.identity, self.library_file, state.model_name,
                                     self.encoder.name, self.index_command("rebuild"))
        if getattr(self.encoder, "loaded", True) and state.dim != self.encoder.dim:
            raise LibraryCorruptError(f"the feature library {self.library_file} says model {state.model} with "
                                      f"{state.dim}-d features, but that model gives {self.encoder.dim}-d features")

    def _scan(self) -> gal.GalleryScan:
        extra = {path.name for path in companion_files(self.library_file)}  # the library file, lock, journal, ...
        same_folder = self.library_file.parent == self.gallery_dir
        return gal.scan_gallery(self.gallery_dir, extra if same_folder else ())

    def index_command(self, command: str) -> str:
        """The exact `python -m clip_app.index ... COMMAND` line for this library and the running model."""
        source = getattr(self.encoder, "source", None) or self.encoder.name
        return index_command(command, source, self.gallery_dir, self.library_file,
                             getattr(self.encoder, "model_dir", None))

    def private_paths(self) -> list[Path]:
        """See private_paths(): what a web server must never serve."""
        return private_paths(self.gallery_dir, self.library_file)

    # ---- reading ----------------------------------------------------------------------------------------
    def _entry(self, state: LibraryState, row: int) -> Entry:
        file = state.files[row]
        return Entry(id=int(state.ids[row]), file=file, path=self.gallery_dir / file, sha256=state.sha256[row],
                     added=float(state.added[row]), size=int(state.sizes[row]), name=state.names[row])

    def get(self, id: int) -> Entry:
        """The entry of an ID; UnknownImageError when it is not in the library."""
        state = self._current()
        row = state.row_of.get(int(id))
        if row is None:
            raise UnknownImageError(f"no image with ID {id} in the library")
        return self._entry(state, row)

    def entries(self, ids: Sequence[int] | torch.Tensor) -> list[Entry]:
        """The entries of several IDs from one state, in the order given; UnknownImageError for an unknown one."""
        state = self._current()
        rows = self._rows_of(state, ids)
        index = torch.tensor(rows, dtype=torch.long)
        folder = str(self.gallery_dir)
        return [Entry(id=i, file=state.files[r], path=Path(folder, state.files[r]), sha256=state.sha256[r], added=a,
                      size=z, name=state.names[r])
                for r, i, a, z in zip(rows, state.ids[index].tolist(), state.added[index].tolist(),
                                      state.sizes[index].tolist())]

    def files_of(self, ids: Sequence[int] | torch.Tensor) -> list[str]:
        """The gallery file names of several IDs, in the order given (UnknownImageError for an unknown one)."""
        state = self._current()
        return [state.files[r] for r in self._rows_of(state, ids)]

    @staticmethod
    def _rows_of(state: LibraryState, ids: Sequence[int] | torch.Tensor) -> list[int]:
        wanted = ids.tolist() if isinstance(ids, torch.Tensor) else [int(i) for i in ids]
        row_of = state.row_of
        rows = [row_of.get(i) for i in wanted]
        if None in rows:
            missing = ", ".join(str(i) for i, r in zip(wanted, rows) if r is None)
            raise UnknownImageError(f"no image with ID {missing} in the library")
        return rows  # type: ignore[return-value]

    def find_sha256(self, sha256: str) -> int | None:
        """The ID of the image with these bytes (hex sha256), or None."""
        return self._current().id_of_hash.get(sha256.lower())

    def __len__(self) -> int:
        return len(self._current())

    def __iter__(self) -> Iterator[Entry]:
        state = self._current()
        return (self._entry(state, row) for row in range(len(state)))

    def page(self, page: int, per_page: int = 48) -> list[Entry]:
        """Entries of one page in ID order; pages start at 1 (a page past the end is empty)."""
        if page < 1 or per_page < 1:
            raise ValueError("page and per_page start at 1")
        state = self._current()
        start = (page - 1) * per_page
        return [self._entry(state, row) for row in range(start, min(start + per_page, len(state)))]

    def snapshot(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids int64 [N], features float32 [N, D]): a consistent pair; never modify them in place."""
        state = self._current()
        self._require_model(state)
        return state.ids, state.features

    def tag_rows(self) -> tuple[str, torch.Tensor, torch.Tensor]:
        """(model identity, ids int64 [N], float16 features [N, D]) of one state, for tagging; never modify them."""
        state = self._current()
        self._require_model(state)
        return state.model, state.ids, state.features16

    def scan(self, query: torch.Tensor, k: int, only_ids: torch.Tensor | None = None
             ) -> tuple[list[tuple[Entry, float]], Scan, torch.Tensor]:
        """search() plus the scan itself (every row's score, for percentiles and confidence) and the results' stored
        features [k, D]; only_ids (int64, ascending) limits the results to those images."""
        state = self._current()
        self._require_model(state)
        allowed = None if only_ids is None else sorted_member(state.ids, only_ids)
        found = scan(query.float().reshape(-1), state.features16, state.ids, k, allowed)
        hits = [(self._entry(state, int(row)), float(score)) for score, row in zip(found.scores, found.rows)]
        return hits, found, state.features16[found.rows]

    def search(self, query: torch.Tensor, k: int) -> list[tuple[Entry, float]]:
        """The k entries most similar to a unit query [D], best first (ties to the lower ID)."""
        state = self._current()
        self._require_model(state)
        scores, rows = top_k(query.float().reshape(-1), state.features16, state.ids, k)  # float16: half the bytes
        return [(self._entry(state, int(row)), float(score)) for score, row in zip(scores, rows)]

    def stats(self) -> dict:
        """count, model, model_name, dim, file_size (bytes of the library file and its journal), journal_size,
        gallery_bytes, next_id, gallery_dir, library_file, journal_file."""
        state = self._current()
        main, journal = signature(self.library_file)
        return {"count": len(state), "model": state.model, "model_name": state.model_name, "dim": state.dim,
                "file_size": (main[2] if main else 0) + (journal[2] if journal else 0),
                "journal_size": journal[2] if journal else 0, "gallery_bytes": int(state.sizes.clamp_min(0).sum()),
                "next_id": state.next_id, "gallery_dir": str(self.gallery_dir),
                "library_file": str(self.library_file), "journal_file": str(journal_path(self.library_file))}

    # ---- adding and removing ----------------------------------------------------------------------------
    def add(self, items: Sequence[Item], progress: Progress | None = None) -> AddReport:
        """Store new images (paths, bytes or (bytes, name)) under new IDs; one save for the whole call."""
        items = list(items)
        total = len(items)
        results: list[AddResult | None] = [None] * total
        state = self._current()
        self._require_model(state)
        done = 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            if progress:
                progress(done, total)

        batcher = _Batcher(self.encoder, self.batch_size, advance)
        candidates: list[_Candidate] = []
        first_of_hash: dict[str, _Candidate] = {}
        repeats: list[tuple[int, _Candidate]] = []
        for index, item in enumerate(items):
            try:
                data, name = _item_bytes(item)
            except ImageError as exc:
                results[index] = AddResult(name=exc.name, status="failed", id=None, error=str(exc))
                advance(1)
                continue
            digest = sha256_bytes(data)
            existing = state.id_of_hash.get(digest)
            if existing is not None or digest in first_of_hash:
                results[index] = AddResult(name=name, status="duplicate", id=existing)
                if existing is None:
                    repeats.append((index, first_of_hash[digest]))
                advance(1)
                continue
            try:
                ext = image_extension(data, name)
                image = decode_image(data, name, min_side=self.encoder.decode_min_side)
            except ImageError as exc:
                results[index] = AddResult(name=name, status="failed", id=None, error=str(exc))
                advance(1)
                continue
            candidate = _Candidate(index=index, name=name, sha256=digest, ext=ext, size=len(data), data=data)
            first_of_hash[digest] = candidate
            candidates.append(candidate)
            batcher.push(candidate, image)
        batcher.flush()
        if candidates:
            with self._writing():
                self._require_model(self._state)
                self._store_new(candidates, results)
        for index, first in repeats:  # the same bytes twice in one call: the first one's ID
            results[index].id = results[first.index].id  # type: ignore[union-attr]
        return AddReport(results=[r for r in results if r is not None])

    def _store_new(self, candidates: list[_Candidate], results: list[AddResult | None]) -> None:
        """Under the write lock: write files, then save the rows once; on failure remove the new files."""
        state = self._state
        fresh: list[_Candidate] = []
        for candidate in candidates:
            existing = state.id_of_hash.get(candidate.sha256)  # added by another writer meanwhile
            if existing is not None:
                results[candidate.index] = AddResult(name=candidate.name, status="duplicate", id=existing)
            else:
                fresh.append(candidate)
        if not fresh:
            return
        new_ids, files, written = [], [], []
        next_id = state.next_id
        try:
            for candidate in fresh:
                while gal.id_taken_on_disk(self.gallery_dir, next_id):
                    log.warning("a file named after ID %d already lies in the gallery; skipping that ID", next_id)
                    next_id += 1
                name = gal.id_file_name(next_id, candidate.ext)
                gal.write_new_file(self.gallery_dir, name, candidate.data or b"")
                written.append(self.gallery_dir / name)
                new_ids.append(next_id)
                files.append(name)
                next_id += 1
            fsync_dir(self.gallery_dir)
            rows = torch.stack([c.feature for c in fresh])  # type: ignore[misc]
            near = self._near_duplicates(state, rows, new_ids)
            new_state = state.appended(new_ids, rows, files, [c.sha256 for c in fresh], [c.size for c in fresh],
                                       [_display_name(c.name) for c in fresh])
            new_state.next_id = max(new_state.next_id, next_id)
            self._save(new_state)
        except (OSError, LibraryWriteError) as exc:
            for path in written:
                path.unlink(missing_ok=True)
            if isinstance(exc, LibraryWriteError):
                raise
            raise LibraryWriteError(f"could not store images in the gallery {self.gallery_dir} ({exc}); nothing "
                                    "was added") from exc
        for candidate, image_id, (near_id, sim) in zip(fresh, new_ids, near):
            candidate.data = None
            results[candidate.index] = AddResult(name=candidate.name, status="added", id=image_id,
                                                 near_duplicate_of=near_id, similarity=sim)
            log.info("added %s as %s", candidate.name, gal.id_file_name(image_id, candidate.ext))

    def _near_duplicates(self, state: LibraryState, rows: torch.Tensor,
                         new_ids: list[int]) -> list[tuple[int | None, float | None]]:
        """For new rows [M, D]: the most similar earlier image (library or earlier in this call) over the threshold."""
        rows = rows.float().to(torch.float16).float()  # as they will be stored
        out: list[tuple[int | None, float | None]] = []
        chunk = 256
        for start in range(0, len(rows), chunk):
            block = rows[start:start + chunk]
            best_sim = torch.full((len(block),), -2.0)
            best_id = torch.full((len(block),), -1, dtype=torch.int64)
            if len(state):
                sims = block @ state.features.T  # [m, N]
                best_sim, arg = sims.max(dim=1)
                best_id = state.ids[arg]
            earlier = rows[:start + len(block)]  # new rows up to this block
            if len(earlier) > 1:
                sims = block @ earlier.T  # [m, start+m]; only strictly earlier rows count
                mask = torch.arange(len(earlier))[None, :] >= (start + torch.arange(len(block)))[:, None]
                sims = sims.masked_fill(mask, -2.0)
                new_best, new_arg = sims.max(dim=1)
                better = new_best > best_sim
                best_sim = torch.where(better, new_best, best_sim)
                best_id = torch.where(better, torch.tensor(new_ids)[new_arg], best_id)
            for sim, near_id in zip(best_sim.tolist(), best_id.tolist()):
                hit = near_id >= 0 and sim >= self.near_duplicate_threshold
                out.append((int(near_id), round(float(sim), 4)) if hit else (None, None))
        return out

    def remove(self, ids: Iterable[int]) -> list[int]:
        """Remove images by ID (row first, then file); an unknown ID raises UnknownImageError and removes nothing."""
        wanted = list(dict.fromkeys(int(i) for i in ids))
        if not wanted:
            return []
        with self._writing():
            state = self._state
            unknown = [i for i in wanted if i not in state.row_of]
            if unknown:
                raise UnknownImageError(f"no image with ID {', '.join(map(str, unknown))} in the library; nothing "
                                        "was removed")
            files = [state.files[state.row_of[i]] for i in wanted]
            self._save(state.without(wanted))
            for name in files:
                try:
                    (self.gallery_dir / name).unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("removed the row but could not delete %s (%s); `check` will report it", name, exc)
            fsync_dir(self.gallery_dir)
        log.info("removed %s", ", ".join(map(str, wanted)))
        return wanted


def private_paths(gallery_dir: Path | str, library_file: Path | str | None) -> list[Path]:
    """Absolute paths a web server must never serve although they may lie in the gallery folder: the library file,
    its lock, journal and label sets file, and the gallery's quarantine folder (files that are not images)."""
    quarantine = Path(gallery_dir).expanduser().absolute() / gal.QUARANTINE_DIR
    if library_file is None:
        return [quarantine]
    return companion_files(Path(library_file).expanduser().absolute()) + [quarantine]


def _item_bytes(item: Item) -> tuple[bytes, str]:
    """(bytes, display name) of one add() input; ImageError when a file cannot be read."""
    if isinstance(item, tuple):
        data, name = item
        return read_bytes(bytes(data), str(name))
    if isinstance(item, (bytes, bytearray)):
        return read_bytes(item)
    return read_bytes(Path(item), str(item))


def _display_name(name: str) -> str:
    return Path(name).name or name
