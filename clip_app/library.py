"""FeatureLibrary: the gallery folder and features_library.pth, joined by a shared integer image ID.

Safety rules (see also library_file.py for the file format and gallery.py for file naming):
- Every write takes a threading lock and a file lock (``<library_file>.lock``), reloads the file first when another
  process changed it, and saves once, atomically (temp file, fsync, os.replace). Until os.replace the old file is
  the valid library.
- Adding: the image file is written first (``gallery/000042.jpg``, original bytes), then the row is saved; if the
  save fails the new files are removed again. Removing: the row is saved first, then the file is deleted. A crash in
  between leaves an image file without a row, which `check` reports and `repair` indexes: no image is ever lost.
- IDs are never reused (``next_id`` in the file only grows). Bytes already in the library are a duplicate: the
  existing ID is returned and nothing is stored.
- A library file of another model raises ModelMismatchError; an unreadable one raises LibraryCorruptError and is
  never overwritten.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, Union

import filelock
import torch
from PIL import Image

from . import gallery as gal
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
    load_state,
    save_state,
)
from .model import ClipEncoder
from .search import top_k

__all__ = [
    "AddReport", "AddResult", "CheckReport", "Entry", "FeatureLibrary", "LibraryBusyError", "LibraryCorruptError",
    "LibraryError", "LibraryWriteError", "ModelMismatchError", "Problem", "RebuildReport", "RepairReport",
    "UnknownImageError",
]

log = logging.getLogger(__name__)

Item = Union[Path, str, bytes, bytearray, tuple]
Progress = Callable[[int, int], None]
UNIT_TOLERANCE = 1e-2  # stored rows are float16: their norms are within ~1e-3 of 1
PROBLEM_KINDS = ("model_mismatch", "missing_file", "hash_mismatch", "not_unit", "orphan_file", "foreign_file")


@dataclass(frozen=True)
class Entry:
    """One image of the library."""

    id: int
    file: str  # gallery file name, relative ("000042.jpg")
    path: Path  # absolute path of the gallery file
    sha256: str
    added: float  # unix time when added
    size: int  # bytes of the file
    name: str = ""  # the name it had when it was added ("cat.jpg", "uploaded image")


@dataclass
class AddResult:
    """What happened to one input of add()."""

    name: str
    status: str  # "added" | "duplicate" | "failed"
    id: int | None
    near_duplicate_of: int | None = None
    similarity: float | None = None
    error: str | None = None


@dataclass
class AddReport:
    """The results of one add() call, in input order."""

    results: list[AddResult]

    @property
    def added(self) -> list[AddResult]:
        return [r for r in self.results if r.status == "added"]

    @property
    def duplicates(self) -> list[AddResult]:
        return [r for r in self.results if r.status == "duplicate"]

    @property
    def near_duplicates(self) -> list[AddResult]:
        return [r for r in self.results if r.status == "added" and r.near_duplicate_of is not None]

    @property
    def failed(self) -> list[AddResult]:
        return [r for r in self.results if r.status == "failed"]

    def summary(self) -> str:
        """One line: '3 added, 1 duplicate, 1 near-duplicate, 0 failed'."""
        dup = len(self.duplicates)
        return (f"{len(self.added)} added, {dup} duplicate{'' if dup == 1 else 's'}, "
                f"{len(self.near_duplicates)} near-duplicate{'' if len(self.near_duplicates) == 1 else 's'}, "
                f"{len(self.failed)} failed")


@dataclass(frozen=True)
class Problem:
    """One disagreement between the gallery folder, the library file and the running model."""

    kind: str  # one of PROBLEM_KINDS
    id: int | None
    file: str | None
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass
class CheckReport:
    """Everything check() found; ok when nothing."""

    problems: list[Problem]
    checked_rows: int = 0
    checked_files: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def by_kind(self, kind: str) -> list[Problem]:
        return [p for p in self.problems if p.kind == kind]

    def summary(self) -> str:
        if self.ok:
            return f"ok: {self.checked_rows} rows and {self.checked_files} gallery files agree"
        counts = {k: len(self.by_kind(k)) for k in PROBLEM_KINDS if self.by_kind(k)}
        return f"{len(self.problems)} problem(s): " + ", ".join(f"{v} {k}" for k, v in counts.items())


@dataclass
class RepairReport:
    """What repair() (or first-run indexing) did, one sentence per action."""

    actions: list[str] = field(default_factory=list)
    indexed: list[int] = field(default_factory=list)  # IDs given to files that had no row
    dropped: list[int] = field(default_factory=list)  # IDs whose row was removed
    reencoded: list[int] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.actions)


@dataclass
class RebuildReport:
    """What rebuild() did."""

    previous_model: str
    model: str
    count: int  # rows in the new library
    reencoded: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    indexed: list[int] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)


@dataclass
class _Candidate:
    """An image on its way into the library (bytes are dropped once the file is written)."""

    index: int
    name: str
    sha256: str
    ext: str
    size: int
    data: bytes | None = None
    source: str | None = None  # gallery file name when it already lies in the gallery
    id_hint: int | None = None
    feature: torch.Tensor | None = None


class _Batcher:
    """Collects decoded images and encodes them batch_size at a time into their candidates' .feature."""

    def __init__(self, encoder: ClipEncoder, batch_size: int, on_done: Callable[[int], None] | None = None) -> None:
        self.encoder, self.batch_size, self.on_done = encoder, batch_size, on_done
        self.pending: list[tuple[_Candidate, Image.Image]] = []

    def push(self, candidate: _Candidate, image: Image.Image) -> None:
        self.pending.append((candidate, image))
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        rows = self.encoder.encode_images([image for _, image in self.pending], batch_size=self.batch_size)
        for (candidate, _), row in zip(self.pending, rows):
            candidate.feature = row
        if self.on_done:
            self.on_done(len(self.pending))
        self.pending = []


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


class FeatureLibrary:
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
        self._lock = threading.RLock()
        self._file_lock = filelock.FileLock(str(self.library_file) + ".lock", timeout=lock_timeout)
        self._signature: tuple[int, int, int] | None = None
        self._state = LibraryState.empty(encoder.identity, encoder.name, encoder.dim)
        self.first_run_report: RepairReport | None = None
        self._open()

    @classmethod
    def open_for_rebuild(cls, gallery_dir: Path | str, library_file: Path | str, encoder: ClipEncoder,
                         **kwargs: object) -> "FeatureLibrary":
        """Open without the model check (for rebuild and check); add/search refuse until rebuild() ran."""
        return cls(gallery_dir, library_file, encoder, check_model=False, **kwargs)  # type: ignore[arg-type]

    # ---- opening, refreshing, locking -------------------------------------------------------------------
    def _open(self) -> None:
        if file_signature(self.library_file) is not None:
            self._load()
            return
        with self._writing():  # first run: index the gallery (once, even when two processes start together)
            if self._signature is not None:
                return  # another process created the file meanwhile; _writing() loaded it
            scan = self._scan()
            if scan.id_files or any(gal.has_image_extension(n) for n in scan.foreign):
                log.info("no feature library at %s: indexing the gallery %s", self.library_file, self.gallery_dir)
                report = RepairReport()
                state = self._index_files(self._state, self._candidates_from_scan(self._state, scan), report,
                                          quarantine_rest=False)
                self._save(state)
                self.first_run_report = report
                log.info("indexed %d gallery images into %s", len(report.indexed), self.library_file)

    def _load(self) -> None:
        """Read the file into memory (retrying when it is replaced while being read); checks the model."""
        for _ in range(5):
            before = file_signature(self.library_file)
            if before is None:
                return  # deleted meanwhile: keep what is in memory
            state = load_state(self.library_file)
            if file_signature(self.library_file) == before:
                break
        if state.model == self.encoder.identity and state.dim != self.encoder.dim:
            raise LibraryCorruptError(f"the feature library {self.library_file} says model {state.model} with "
                                      f"{state.dim}-d features, but that model gives {self.encoder.dim}-d features")
        if state.model != self.encoder.identity and len(state) == 0:
            log.info("the empty library %s was made by %s; it now belongs to %s", self.library_file,
                     state.model, self.encoder.identity)
            fresh = LibraryState.empty(self.encoder.identity, self.encoder.name, self.encoder.dim)
            fresh.next_id = state.next_id
            state = fresh
        if self._check_model:
            self._require_model(state)
        self._state, self._signature = state, before

    def _refresh(self) -> None:
        """Reload when another process saved the file since we last read or wrote it."""
        signature = file_signature(self.library_file)
        if signature == self._signature:
            return
        if signature is None:
            log.warning("the feature library %s disappeared; keeping the %d rows in memory (saved on the next "
                        "change)", self.library_file, len(self._state))
            self._signature = None
            return
        self._load()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One writer at a time (threads and processes); the state is fresh from disk inside."""
        with self._lock:
            try:
                self._file_lock.acquire()
            except filelock.Timeout:
                raise LibraryBusyError(f"the feature library {self.library_file} is locked by another process "
                                       f"(lock file {self._file_lock.lock_file}); try again later") from None
            try:
                self._refresh()
                yield
            finally:
                self._file_lock.release()

    def _current(self) -> LibraryState:
        with self._lock:
            self._refresh()
            return self._state

    def _save(self, state: LibraryState) -> None:
        save_state(state, self.library_file)
        self._state, self._signature = state, file_signature(self.library_file)

    def _require_model(self, state: LibraryState) -> None:
        if state.model != self.encoder.identity:
            raise ModelMismatchError(state.model, self.encoder.identity, self.library_file, state.model_name,
                                     self.encoder.name)

    def _scan(self) -> gal.GalleryScan:
        extra = {self.library_file.name, self.library_file.name + ".lock"}
        same_folder = self.library_file.parent == self.gallery_dir
        return gal.scan_gallery(self.gallery_dir, extra if same_folder else ())

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

    def search(self, query: torch.Tensor, k: int) -> list[tuple[Entry, float]]:
        """The k entries most similar to a unit query [D], best first (ties to the lower ID)."""
        state = self._current()
        self._require_model(state)
        scores, rows = top_k(query.float().reshape(-1), state.features, state.ids, k)
        return [(self._entry(state, int(row)), float(score)) for score, row in zip(scores, rows)]

    def stats(self) -> dict:
        """count, model, model_name, dim, file_size (bytes), gallery_bytes, next_id, gallery_dir, library_file."""
        state = self._current()
        signature = file_signature(self.library_file)
        return {"count": len(state), "model": state.model, "model_name": state.model_name, "dim": state.dim,
                "file_size": signature[2] if signature else 0, "gallery_bytes": int(state.sizes.clamp_min(0).sum()),
                "next_id": state.next_id, "gallery_dir": str(self.gallery_dir),
                "library_file": str(self.library_file)}

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
                image = decode_image(data, name)
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

    # ---- check, repair, rebuild -------------------------------------------------------------------------
    def check(self, hashes: bool = True, progress: Progress | None = None) -> CheckReport:
        """List every disagreement between folder, file and running model (hashes=False skips reading files)."""
        state = self._current()
        problems: list[Problem] = []
        if state.model != self.encoder.identity:
            problems.append(Problem("model_mismatch", None, None, f"the library was made with {state.model_name} "
                                    f"({state.model}), the running model is {self.encoder.name} "
                                    f"({self.encoder.identity}): run `python -m clip_app.index rebuild`"))
        norms = state.features.norm(dim=1) if len(state) else torch.empty(0)
        bad_norm = ~torch.isfinite(norms) | ((norms - 1).abs() > UNIT_TOLERANCE)
        for row in range(len(state)):
            image_id, name = int(state.ids[row]), state.files[row]
            path = self.gallery_dir / name
            if not path.is_file():
                problems.append(Problem("missing_file", image_id, name, f"ID {image_id} has a row but its file "
                                        f"{name} is missing"))
            elif hashes:
                digest = _file_sha256(path)
                if digest != state.sha256[row]:
                    problems.append(Problem("hash_mismatch", image_id, name, f"{name} changed since it was added "
                                            f"(sha256 {digest[:12]}..., stored {state.sha256[row][:12]}...)"))
            if bool(bad_norm[row]):
                problems.append(Problem("not_unit", image_id, name, f"the feature row of ID {image_id} has length "
                                        f"{float(norms[row]):.4f}, not 1"))
            if progress:
                progress(row + 1, len(state))
        scan = self._scan()
        expected = set(state.files)
        for image_id, names in sorted(scan.id_files.items()):
            for name in names:
                if name not in expected:
                    problems.append(Problem("orphan_file", image_id, name, f"{name} lies in the gallery but has no "
                                            "row in the library"))
        for name in scan.foreign:
            kind = "folder" if (self.gallery_dir / name).is_dir() else "file"
            problems.append(Problem("foreign_file", None, name, f"the {kind} {name} is not named by an image ID"))
        checked_files = sum(len(v) for v in scan.id_files.values()) + len(scan.foreign)
        return CheckReport(problems=problems, checked_rows=len(state), checked_files=checked_files)

    def repair(self, progress: Progress | None = None) -> RepairReport:
        """Fix what check() finds: drop rows without files, re-encode changed or non-unit rows, index files without
        rows (new IDs, renamed into the ID scheme), move what cannot be indexed to gallery/.quarantine/."""
        report = RepairReport()
        with self._writing():
            state = self._state
            self._require_model(state)
            norms = state.features.norm(dim=1) if len(state) else torch.empty(0)
            bad_norm = (~torch.isfinite(norms) | ((norms - 1).abs() > UNIT_TOLERANCE)).tolist()
            drop: list[int] = []
            redo: list[_Candidate] = []
            batcher = _Batcher(self.encoder, self.batch_size)
            for row in range(len(state)):
                image_id, name = int(state.ids[row]), state.files[row]
                path = self.gallery_dir / name
                if not path.is_file():
                    drop.append(image_id)
                    report.actions.append(f"dropped the row of ID {image_id}: its file {name} is gone")
                    continue
                data = path.read_bytes()
                digest = sha256_bytes(data)
                if digest == state.sha256[row] and not bad_norm[row]:
                    continue
                why = "its file changed" if digest != state.sha256[row] else "its row was not unit length"
                try:
                    image = decode_image(data, name)
                except ImageError as exc:
                    drop.append(image_id)
                    moved = gal.quarantine(self.gallery_dir, name)
                    report.quarantined.append(moved)
                    report.actions.append(f"dropped ID {image_id} ({why}, and it is no longer a usable image: "
                                          f"{exc.reason}); moved the file to {moved}")
                    continue
                candidate = _Candidate(index=image_id, name=name, sha256=digest, ext="", size=len(data))
                redo.append(candidate)
                batcher.push(candidate, image)
                report.actions.append(f"re-encoded ID {image_id} ({why})")
            batcher.flush()
            state = state.without(drop) if drop else state
            if redo:
                state = state.with_rows([c.index for c in redo], torch.stack([c.feature for c in redo]),
                                        [c.sha256 for c in redo], [c.size for c in redo])
            report.dropped, report.reencoded = drop, [c.index for c in redo]
            state = self._index_files(state, self._candidates_from_scan(state, self._scan()), report,
                                      quarantine_rest=True, progress=progress)
            if report.actions:
                self._save(state)
        for action in report.actions:
            log.info("repair: %s", action)
        return report

    def rebuild(self, progress: Progress | None = None) -> RebuildReport:
        """Re-encode every gallery image with the running model into a new file, swapped in atomically."""
        with self._writing():
            old = self._state
            report = RebuildReport(previous_model=old.model, model=self.encoder.identity, count=0)
            state = LibraryState.empty(self.encoder.identity, self.encoder.name, self.encoder.dim)
            state.next_id = old.next_id
            total = len(old)
            done = 0

            def advance(count: int) -> None:
                nonlocal done
                done += count
                if progress:
                    progress(done, total)

            batcher = _Batcher(self.encoder, self.batch_size, advance)
            kept: list[tuple[int, _Candidate]] = []
            for row in range(len(old)):
                image_id, name = int(old.ids[row]), old.files[row]
                try:
                    data, _ = read_bytes(self.gallery_dir / name, name)
                    image = decode_image(data, name)
                except ImageError as exc:
                    report.dropped.append(image_id)
                    report.actions.append(f"dropped ID {image_id}: {exc}")
                    advance(1)
                    continue
                candidate = _Candidate(index=image_id, name=old.names[row], sha256=sha256_bytes(data), ext="",
                                       size=len(data), source=name)
                kept.append((row, candidate))
                batcher.push(candidate, image)
            batcher.flush()
            if kept:
                state = state.appended(
                    [c.index for _, c in kept], torch.stack([c.feature for _, c in kept]),  # type: ignore[misc]
                    [c.source for _, c in kept], [c.sha256 for _, c in kept],  # type: ignore[misc]
                    [c.size for _, c in kept], [c.name for _, c in kept], added=[float(old.added[r]) for r, _ in kept])
            report.reencoded = [c.index for _, c in kept]
            extra = RepairReport()
            state = self._index_files(state, self._candidates_from_scan(state, self._scan()), extra,
                                      quarantine_rest=False)
            report.indexed, report.actions = extra.indexed, report.actions + extra.actions
            self._save(state)
            self._check_model = True
            report.count = len(state)
        log.info("rebuilt %s with %s: %d rows", self.library_file, self.encoder.identity, report.count)
        return report

    # ---- indexing files that lie in the gallery without a row -------------------------------------------
    def _candidates_from_scan(self, state: LibraryState, scan: gal.GalleryScan) -> list[tuple[str, int | None]]:
        """(file name, ID from its name or None) of every non-ignored gallery entry that is not a row's file."""
        expected = set(state.files)
        out = [(name, image_id) for image_id, names in sorted(scan.id_files.items()) for name in names
               if name not in expected]
        return out + [(name, None) for name in scan.foreign]

    def _index_files(self, state: LibraryState, entries: list[tuple[str, int | None]], report: RepairReport,
                     quarantine_rest: bool, progress: Progress | None = None) -> LibraryState:
        """Give rows to gallery files that have none. An ID-shaped name keeps its ID when that ID was never issued
        (>= next_id); other images get new IDs and are renamed into the ID scheme (same bytes, no copy). Entries
        that cannot be indexed (not images, duplicates, folders) move to .quarantine/ when quarantine_rest is true,
        else stay where they are."""
        encoded = 0

        def advance(count: int) -> None:
            nonlocal encoded
            encoded += count
            if progress:
                progress(encoded, len(done_list))

        batcher = _Batcher(self.encoder, self.batch_size, advance)
        done_list: list[_Candidate] = []
        seen = {digest: f"ID {image_id}" for digest, image_id in state.id_of_hash.items()}

        def set_aside(name: str, why: str) -> None:
            if quarantine_rest:
                moved = gal.quarantine(self.gallery_dir, name)
                report.quarantined.append(moved)
                report.actions.append(f"moved {name} to {moved}: {why}")
            else:
                log.info("not indexing %s: %s", name, why)

        for name, id_hint in entries:
            path = self.gallery_dir / name
            if not path.is_file():
                set_aside(name, "not a regular file")
                continue
            if id_hint is None and not gal.has_image_extension(name):
                set_aside(name, "not an image file name")
                continue
            try:
                data, _ = read_bytes(path, name)
                ext = image_extension(data, name)
                image = decode_image(data, name)
            except ImageError as exc:
                set_aside(name, f"not a usable image ({exc.reason})")
                continue
            digest = sha256_bytes(data)
            if digest in seen:
                set_aside(name, f"the same bytes are already in the library as {seen[digest]}")
                continue
            candidate = _Candidate(index=-1, name=name, sha256=digest, ext=ext, size=len(data), source=name,
                                   id_hint=id_hint)
            seen[digest] = name
            done_list.append(candidate)
            batcher.push(candidate, image)
        batcher.flush()
        if not done_list:
            return state
        issued_below = state.next_id  # IDs below this were given before: never reuse them
        taken: set[int] = set(state.row_of)
        for candidate in done_list:  # first: names whose ID was never issued keep it
            hint = candidate.id_hint
            if hint is not None and hint >= issued_below and hint not in taken:
                target = gal.id_file_name(hint, candidate.ext)
                if target == candidate.source or not os.path.lexists(self.gallery_dir / target):
                    candidate.index = hint
                    taken.add(hint)
        next_id = max([state.next_id] + [c.index + 1 for c in done_list if c.index >= 0])
        for candidate in done_list:
            if candidate.index < 0:
                while next_id in taken or gal.id_taken_on_disk(self.gallery_dir, next_id):
                    next_id += 1
                candidate.index = next_id
                taken.add(next_id)
                next_id += 1
        ids, files = [], []
        for candidate in sorted(done_list, key=lambda c: c.index):
            target = gal.id_file_name(candidate.index, candidate.ext)
            if target != candidate.source:
                gal.move_no_clobber(self.gallery_dir / candidate.source, self.gallery_dir / target)  # type: ignore
                report.actions.append(f"indexed {candidate.source} as ID {candidate.index} (renamed to {target})")
            else:
                report.actions.append(f"indexed {target} as ID {candidate.index}")
            ids.append(candidate.index)
            files.append(target)
            report.indexed.append(candidate.index)
        fsync_dir(self.gallery_dir)
        ordered = sorted(done_list, key=lambda c: c.index)
        state = state.appended(ids, torch.stack([c.feature for c in ordered]), files,  # type: ignore[misc]
                               [c.sha256 for c in ordered], [c.size for c in ordered],
                               [c.source or "" for c in ordered])
        state.next_id = max(state.next_id, next_id)
        return state


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


def _file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
