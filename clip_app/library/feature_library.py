"""FeatureLibrary: the gallery folder and features_library.pth, joined by a shared integer image ID.

Safety rules (see also store.py and fileformat.py for the files, and gallery.py for file naming):
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
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Union

import torch

from ..encoders import ClipEncoder
from ..files import create_new, fsync_dir, sha256_bytes
from ..images import ImageError
from . import gallery as gal
from . import maintenance
from .errors import LibraryCorruptError, LibraryWriteError, ModelMismatchError, UnknownImageError
from .ingest import Batcher, Candidate, Counter, Progress, decode_for, read_item
from .pg_sql import is_database_url, parse_url
from .reports import AddReport, AddResult, CheckReport, Entry, RebuildReport, RepairReport, index_command
from .state import LibraryState
from .store import FileStore, Store, companion_files

log = logging.getLogger(__name__)

Item = Union[Path, str, bytes, bytearray, tuple]


class FeatureLibrary:
    """Gallery images and their CLIP features under shared integer IDs; thread- and process-safe.

    A composition: the gallery folder (gallery.py), a Store of rows (store.py; by default the FileStore over
    `library_file`) and an encoder; check/repair/rebuild are functions of maintenance.py over the three."""

    def __init__(self, gallery_dir: Path | str, library_file: Path | str, encoder: ClipEncoder,
                 near_duplicate_threshold: float = 0.97, batch_size: int = 32, *, check_model: bool = True,
                 lock_timeout: float = 300.0, store: Store | None = None) -> None:
        self.gallery_dir = Path(gallery_dir).expanduser().absolute()
        self.encoder = encoder
        self.near_duplicate_threshold = float(near_duplicate_threshold)
        self.batch_size = max(1, int(batch_size))
        self.check_model = check_model
        #: the library file, or for a database store its URL (password masked), for messages and commands
        self.library_file: Path | str = parse_url(str(library_file)).shown if is_database_url(library_file) \
            else Path(library_file).expanduser().absolute()
        if store is None and is_database_url(library_file):  # postgresql://...: PostgreSQL + pgvector (pg_store.py)
            from .pg_store import PostgresStore

            store = PostgresStore(str(library_file), self._empty_state, self._adopt, lock_timeout=lock_timeout)
        self.store: Store = store if store is not None else FileStore(
            self.library_file, self._empty_state, self._adopt, lock_timeout=lock_timeout)
        self.first_run_report: RepairReport | None = None
        self._open()

    @classmethod
    def open_for_rebuild(cls, gallery_dir: Path | str, library_file: Path | str, encoder: ClipEncoder,
                         **kwargs: object) -> "FeatureLibrary":
        """Open without the model check (for rebuild and check); add/search refuse until rebuild() ran."""
        return cls(gallery_dir, library_file, encoder, check_model=False, **kwargs)  # type: ignore[arg-type]

    # ---- opening and the model check --------------------------------------------------------------------
    def _empty_state(self) -> LibraryState:
        return LibraryState.empty(self.encoder.identity, self.encoder.name, self.encoder.dim)

    def _adopt(self, state: LibraryState) -> LibraryState:
        """Every state read from the store: an empty library of another model now belongs to the running one; a
        full one of another model raises ModelMismatchError (unless opened for rebuild)."""
        if state.model != self.encoder.identity and len(state) == 0 and self.check_model:
            log.info("the empty library %s was made by %s; it now belongs to %s", self.library_file,
                     state.model, self.encoder.identity)
            fresh = self._empty_state()
            fresh.next_id = state.next_id
            state = fresh
        if self.check_model:
            self.require_model(state)
        return state

    def _open(self) -> None:
        """Without a saved library, index the gallery (the only case where opening needs the model itself: list,
        stats, check and remove of an existing library work with its identity alone)."""
        if self.store.exists():
            return
        with self.store.writing() as state:  # first run: index the gallery (once, even when two processes start)
            if self.store.exists():
                return  # another process created the file meanwhile; writing() loaded it
            scan = self.scan()
            if scan.id_files or any(gal.has_image_extension(n) for n in scan.foreign):
                log.info("no feature library at %s: indexing the gallery %s", self.library_file, self.gallery_dir)
                report = RepairReport()
                state = maintenance.index_files(self, state, maintenance.candidates_from_scan(self, (), scan),
                                                report, maintenance.gallery_reader(self), quarantine_rest=False)
                self.store.save(state, compact=True)
                self.first_run_report = report
                log.info("indexed %d gallery images into %s", len(report.indexed), self.library_file)

    def require_model(self, state: LibraryState) -> None:
        """ModelMismatchError unless the state was made by the running model; LibraryCorruptError when it says so
        but its width is not the model's (checked once the model is loaded: see index.LazyEncoder)."""
        if state.model != self.encoder.identity:
            raise ModelMismatchError(state.model, self.encoder.identity, self.library_file, state.model_name,
                                     self.encoder.name, self.index_command("rebuild"))
        if self.encoder.loaded and state.dim != self.encoder.dim:
            raise LibraryCorruptError(f"the feature library {self.library_file} says model {state.model} with "
                                      f"{state.dim}-d features, but that model gives {self.encoder.dim}-d features")

    def scan(self) -> gal.GalleryScan:
        if not isinstance(self.library_file, Path):  # a database store: none of its data lies in the gallery
            return gal.scan_gallery(self.gallery_dir, ())
        extra = {path.name for path in companion_files(self.library_file)}  # the library file, lock, journal, ...
        same_folder = self.library_file.parent == self.gallery_dir
        return gal.scan_gallery(self.gallery_dir, extra if same_folder else ())

    def index_command(self, command: str) -> str:
        """The exact `python -m clip_app.index ... COMMAND` line for this library and the running model."""
        return index_command(command, self.encoder.source or self.encoder.name, self.gallery_dir,
                             self.library_file, self.encoder.model_dir)

    # ---- check, repair, rebuild (maintenance.py) ---------------------------------------------------------
    def check(self, hashes: bool = True, progress: Progress | None = None) -> CheckReport:
        """List every disagreement between folder, rows and running model (hashes=False skips reading files)."""
        return maintenance.check(self, hashes, progress)

    def repair(self, progress: Progress | None = None) -> RepairReport:
        """Fix what check() finds (see maintenance.repair); never deletes what it cannot index."""
        return maintenance.repair(self, progress)

    def rebuild(self, progress: Progress | None = None) -> RebuildReport:
        """Re-encode every gallery image with the running model into a new library, swapped in atomically."""
        return maintenance.rebuild(self, progress)

    # ---- reading ----------------------------------------------------------------------------------------
    def _entry(self, state: LibraryState, row: int) -> Entry:
        file = state.files[row]
        return Entry(id=int(state.ids[row]), file=file, path=self.gallery_dir / file, sha256=state.sha256[row],
                     added=float(state.added[row]), size=int(state.sizes[row]), name=state.names[row])

    def get(self, id: int) -> Entry:
        """The entry of an ID; UnknownImageError when it is not in the library."""
        state = self.store.current()
        row = state.row_of.get(int(id))
        if row is None:
            raise UnknownImageError(f"no image with ID {id} in the library")
        return self._entry(state, row)

    def find_sha256(self, sha256: str) -> int | None:
        """The ID of the image with these bytes (hex sha256), or None."""
        return self.store.current().id_of_hash.get(sha256.lower())

    def __len__(self) -> int:
        return len(self.store.current())

    def __iter__(self) -> Iterator[Entry]:
        state = self.store.current()
        return (self._entry(state, row) for row in range(len(state)))

    def page(self, page: int, per_page: int = 48) -> list[Entry]:
        """Entries of one page in ID order; pages start at 1 (a page past the end is empty)."""
        if page < 1 or per_page < 1:
            raise ValueError("page and per_page start at 1")
        state = self.store.current()
        start = (page - 1) * per_page
        return [self._entry(state, row) for row in range(start, min(start + per_page, len(state)))]

    def snapshot(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids int64 [N], features float32 [N, D]): a consistent pair, the float32 rows made on each call (twice the
        memory of the stored float16 rows); never modify them in place."""
        state = self.store.current()
        self.require_model(state)
        return state.ids, state.features

    def search(self, query: torch.Tensor, k: int) -> list[tuple[Entry, float]]:
        """The k entries most similar to a unit query [D], best first (ties to the lower ID)."""
        state = self.store.current()
        self.require_model(state)
        scores, ids = self.store.search(state, query.float().reshape(-1), k)
        return [(self._entry(state, state.row_of[int(i)]), float(score)) for score, i in zip(scores, ids)]

    def stats(self) -> dict:
        """count, model, model_name, dim, file_size (bytes of the library file and its journal), journal_size,
        gallery_bytes, next_id, gallery_dir, library_file, journal_file."""
        state = self.store.current()
        usage = self.store.usage()
        return {"count": len(state), "model": state.model, "model_name": state.model_name, "dim": state.dim,
                "file_size": usage["file_size"], "journal_size": usage["journal_size"],
                "gallery_bytes": int(state.sizes.clamp_min(0).sum()), "next_id": state.next_id,
                "gallery_dir": str(self.gallery_dir), "library_file": str(self.library_file),
                "journal_file": usage["journal_file"]}

    # ---- adding and removing ----------------------------------------------------------------------------
    def add(self, items: Sequence[Item], progress: Progress | None = None) -> AddReport:
        """Store new images (paths, bytes or (bytes, name)) under new IDs; one save for the whole call. Each result
        of an added or duplicate image carries its stored feature row [D]."""
        items = list(items)
        total = len(items)
        results: list[AddResult | None] = [None] * total
        state = self.store.current()
        self.require_model(state)
        advance = Counter(progress, total)
        batcher = Batcher(self.encoder, self.batch_size, advance)
        candidates: list[Candidate] = []
        first_of_hash: dict[str, Candidate] = {}
        repeats: list[tuple[int, Candidate]] = []
        for index, item in enumerate(items):
            try:
                data, name = read_item(item)
            except ImageError as exc:
                results[index] = AddResult(name=exc.name, status="failed", id=None, error=str(exc))
                advance(1)
                continue
            digest = sha256_bytes(data)  # read -> hash -> decode -> encode, as repair does (ingest.py)
            existing = state.id_of_hash.get(digest)
            if existing is not None or digest in first_of_hash:
                results[index] = AddResult(name=name, status="duplicate", id=existing,
                                           feature=None if existing is None else state.row_feature(existing))
                if existing is None:
                    repeats.append((index, first_of_hash[digest]))
                advance(1)
                continue
            try:
                ext, image = decode_for(self.encoder, data, name)
            except ImageError as exc:
                results[index] = AddResult(name=name, status="failed", id=None, error=str(exc))
                advance(1)
                continue
            candidate = Candidate(index=index, name=name, sha256=digest, ext=ext, size=len(data), data=data)
            first_of_hash[digest] = candidate
            candidates.append(candidate)
            batcher.push(candidate, image)
        batcher.flush()
        if candidates:
            with self.store.writing() as state:
                self.require_model(state)
                self._store_new(state, candidates, results)
        for index, first in repeats:  # the same bytes twice in one call: the first one's ID
            results[index].id = results[first.index].id  # type: ignore[union-attr]
            results[index].feature = results[first.index].feature  # type: ignore[union-attr]
        return AddReport(results=[r for r in results if r is not None])

    def _store_new(self, state: LibraryState, candidates: list[Candidate], results: list[AddResult | None]) -> None:
        """Under the write lock: write files, then save the rows once; on failure remove the new files."""
        fresh: list[Candidate] = []
        for candidate in candidates:
            existing = state.id_of_hash.get(candidate.sha256)  # added by another writer meanwhile
            if existing is not None:
                results[candidate.index] = AddResult(name=candidate.name, status="duplicate", id=existing,
                                                     feature=state.row_feature(existing))
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
                create_new(self.gallery_dir, name, candidate.data or b"")
                written.append(self.gallery_dir / name)
                new_ids.append(next_id)
                files.append(name)
                next_id += 1
            fsync_dir(self.gallery_dir)
            rows = torch.stack([c.feature for c in fresh])  # type: ignore[misc]
            near = self._near_duplicates(state, rows, new_ids)
            stored = self.store.append(new_ids, rows, files, [c.sha256 for c in fresh], [c.size for c in fresh],
                              [_display_name(c.name) for c in fresh], next_id)
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
                                                 near_duplicate_of=near_id, similarity=sim,
                                                 feature=stored.row_feature(image_id))
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
            nearest = getattr(self.store, "nearest", None)  # a store with an index answers itself (pg_store.py)
            found = nearest(state, block) if nearest is not None and len(state) else None
            if found is not None:
                best_id, best_sim = found
            # else the library in chunks (no float32 copy of it)
            for first, stored in (state.float_chunks() if found is None else ()):
                sims = block @ stored.T  # [m, chunk]
                chunk_best, arg = sims.max(dim=1)
                better = chunk_best > best_sim
                best_sim = torch.where(better, chunk_best, best_sim)
                best_id = torch.where(better, state.ids[first + arg], best_id)
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
        with self.store.writing() as state:
            unknown = [i for i in wanted if i not in state.row_of]
            if unknown:
                raise UnknownImageError(f"no image with ID {', '.join(map(str, unknown))} in the library; nothing "
                                        "was removed")
            files = [state.files[state.row_of[i]] for i in wanted]
            kept = self.store.remove(wanted)
            owned = set(kept.files) if len(files) > 16 else {n for n in files if kept.files.count(n)}
            for name in files:
                if name in owned:  # another row names this file (a damaged library): never delete its image
                    log.warning("removed the row but kept %s: another row still names it; `check` reports it", name)
                    continue
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
    if library_file is None or is_database_url(library_file):
        return [quarantine]
    return companion_files(Path(library_file).expanduser().absolute()) + [quarantine]


def _display_name(name: str) -> str:
    return Path(name).name or name
