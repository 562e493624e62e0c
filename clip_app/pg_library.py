"""FeatureLibrary over the PostgreSQL store (`--library postgresql://USER@HOST:PORT/DB[?table=NAME]`).

The gallery folder stays on a filesystem every app server mounts; rows, metadata and companion documents live in
PostgreSQL (clip_app.pg_store). Reads (search, get, find, pages, counts) are SQL queries on a snapshot and never wait
for a writer; they see every committed write at once, whichever process made it. Writes take the store's advisory
lock and commit in one transaction each. The whole state is only loaded into memory where the work needs every row
(add's near-duplicate test, check, repair, rebuild, snapshot), and reloaded when another process wrote since.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from . import gallery as gal
from .encoders import ClipEncoder
from .label_sets import FORMAT_VERSION as LABEL_SETS_FORMAT
from .label_sets import LabelSetError, LabelSetStore
from .library import FeatureLibrary
from .library_file import (
    LibraryCorruptError,
    LibraryState,
    LibraryWriteError,
    UnknownImageError,
    fsync_dir,
    sorted_member,
)
from .library_maintenance import _PARTIAL, Progress, _Candidate
from .library_reports import AddReport, AddResult, Entry, RepairReport, index_command
from .pg_store import Meta, PgStore, is_database_url

log = logging.getLogger("clip_app.library")

LABEL_SETS_DOCUMENT = "label_sets"

__all__ = ["PgFeatureLibrary", "PgLabelSetStore", "is_database_url", "open_feature_library"]


class PgFeatureLibrary(FeatureLibrary):
    """A FeatureLibrary whose rows live in PostgreSQL + pgvector; same API and the same reports as the file store."""

    def __init__(self, gallery_dir: Path | str, library_url: str, encoder: ClipEncoder,
                 near_duplicate_threshold: float = 0.97, batch_size: int = 32, *, check_model: bool = True,
                 lock_timeout: float = 300.0) -> None:
        self.store = PgStore(str(library_url), lock_timeout=lock_timeout)  # StoreConnectionError: fast and clear
        self.gallery_dir = Path(gallery_dir).expanduser().absolute()
        self.library_file = self.store.location.shown  # type: ignore[assignment]  # a URL, for messages
        self.encoder = encoder
        self.near_duplicate_threshold = float(near_duplicate_threshold)
        self.batch_size = max(1, int(batch_size))
        self._check_model = check_model
        self._lock = threading.RLock()
        self._write_mutex = threading.Lock()
        self._writer_holds_file_lock = False
        self._mirror: LibraryState | None = None
        self._mirror_version = -1
        self._meta: Meta | None = None
        self._adding = threading.local()  # add() in progress on this thread: _state is a _SqlView
        self.first_run_report: RepairReport | None = None
        self._open()

    # ---- the in-memory copy: loaded when first needed, dropped when another writer changed the tables ----------
    @property  # type: ignore[override]
    def _state(self) -> LibraryState:
        if getattr(self._adding, "active", False):
            return _SqlView(self)  # type: ignore[return-value]
        with self._lock:
            if self._mirror is None or self._mirror_version != self._meta.version:  # type: ignore[union-attr]
                state, version = self.store.load()
                self._mirror, self._mirror_version = state, version
                self._meta = Meta(state.model, state.model_name, state.dim, state.next_id, version)
            return self._mirror

    @_state.setter
    def _state(self, value: LibraryState) -> None:
        self._mirror = value

    def _open(self) -> None:
        meta = self.store.meta()
        if meta is not None:
            self._meta = meta
            self._check_meta(meta)
            return
        self.store.create(self.encoder.identity, self.encoder.name, self.encoder.dim)
        self._meta = self.store.meta()
        with self._writing():  # a new library: index what the gallery holds already (as the file store does)
            scan = self._scan()
            if len(self._state) == 0 and (scan.id_files or any(gal.has_image_extension(n) for n in scan.foreign)):
                report = RepairReport()
                state = self._index_files(self._state, self._candidates_from_scan((), scan), report, self._reader(),
                                          quarantine_rest=False)
                self._save(state, compact=True)
                self.first_run_report = report
                log.info("indexed %d gallery images into %s", len(report.indexed), self.library_file)

    def _check_meta(self, meta: Meta) -> None:
        """An empty library of another model is taken over; a full one raises ModelMismatchError (check_model)."""
        if meta.model != self.encoder.identity and self._check_model:
            if self.store.count() == 0:
                with self._writing():
                    self._save(LibraryState.empty(self.encoder.identity, self.encoder.name, self.encoder.dim),
                               compact=True)
                return
            self._require_model(meta)  # type: ignore[arg-type]
        elif self._check_model:
            self._require_model(meta)  # type: ignore[arg-type]

    def _refresh(self) -> None:
        """Read the metadata row (one query): a new version means another writer committed."""
        meta = self.store.meta()
        if meta is None:
            raise LibraryCorruptError(f"the library tables of {self.library_file} were dropped while in use")
        with self._lock:
            self._meta = meta

    def _load(self) -> None:
        self._refresh()

    def _current(self) -> LibraryState:
        self._refresh()
        return self._state  # during add(): a view answering by SQL (_SqlView)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        with self._write_mutex, self.store.writing() as meta:
            if meta is None:
                raise LibraryCorruptError(f"the library tables of {self.library_file} were dropped while in use")
            with self._lock:
                self._meta = meta  # as of the lock: every earlier write is visible
                self._writer_holds_file_lock = True
            try:
                yield
            finally:
                with self._lock:
                    self._writer_holds_file_lock = False

    def _check_lock_file(self) -> None:
        return

    def _save(self, state: LibraryState, compact: bool = False) -> None:
        """Write the difference between the loaded state and `state` in one transaction (appends: the new rows;
        removals: the IDs; compact, as repair saves: also every row whose bytes or features changed)."""
        old = self._state
        kwargs: dict[str, Any] = dict(model=state.model, model_name=state.model_name, dim=state.dim,
                                      next_id=state.next_id)
        if state.model != old.model or state.dim != old.dim:
            version = self.store.apply(rows=state, replace_all=True, **kwargs)
        elif len(state) >= len(old) and torch.equal(state.ids[:len(old)], old.ids) and not compact:
            # only appends (every add): write the new rows; the others are the same objects
            new_rows = torch.arange(len(old), len(state))
            version = self.store.apply(rows=state.reordered(new_rows) if len(new_rows) else None, **kwargs)
        else:
            removed = old.ids[~sorted_member(old.ids, state.ids)].tolist()
            new = ~sorted_member(state.ids, old.ids)
            common = torch.nonzero(~new).flatten()
            if compact and len(common):  # repair re-encodes rows: write those whose bytes or features changed
                old_rows = torch.searchsorted(old.ids, state.ids[common])
                hashes_differ = torch.tensor([state.sha256[r] != old.sha256[o]
                                              for r, o in zip(common.tolist(), old_rows.tolist())], dtype=torch.bool)
                rows_differ = (state.features16[common] != old.features16[old_rows]).any(dim=1)
                new[common[hashes_differ | rows_differ]] = True
            write = torch.nonzero(new).flatten()
            changed = state.ids[write][sorted_member(state.ids[write], old.ids)].tolist()
            version = self.store.apply(remove=removed + changed, rows=state.reordered(write) if len(write) else None,
                                       **kwargs)
        with self._lock:
            self._mirror, self._mirror_version = state, version
            self._meta = Meta(state.model, state.model_name, state.dim, state.next_id, version)

    # ---- adding without the whole state: duplicates, IDs and near-duplicates through SQL ----------------------
    def add(self, items: Sequence[Any], progress: Progress | None = None) -> AddReport:
        """FeatureLibrary.add; the library's rows are looked up by SQL (no row is loaded into memory)."""
        self._adding.active = True
        try:
            return super().add(items, progress)
        finally:
            self._adding.active = False

    def _store_new(self, candidates: list[_Candidate], results: list[AddResult | None]) -> None:
        """Under the write lock: write files, then insert the rows in one transaction; on failure remove the files."""
        known = self.store.known_hashes([c.sha256 for c in candidates])  # added by another writer meanwhile
        fresh: list[_Candidate] = []
        for candidate in candidates:
            if candidate.sha256 in known:
                results[candidate.index] = AddResult(name=candidate.name, status="duplicate",
                                                     id=known[candidate.sha256])
            else:
                fresh.append(candidate)
        if not fresh:
            return
        meta = self._meta
        new_ids, files, written = [], [], []
        next_id = meta.next_id  # type: ignore[union-attr]
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
            near = self._near_duplicates_sql(rows, new_ids)
            new = LibraryState.empty(meta.model, meta.model_name, meta.dim).appended(  # type: ignore[union-attr]
                new_ids, rows, files, [c.sha256 for c in fresh], [c.size for c in fresh],
                [Path(c.name).name or c.name for c in fresh])
            version = self.store.apply(model=meta.model, model_name=meta.model_name, dim=meta.dim,  # type: ignore
                                       next_id=next_id, rows=new)
        except (OSError, LibraryWriteError) as exc:
            for path in written:
                path.unlink(missing_ok=True)
            if isinstance(exc, LibraryWriteError):
                raise
            raise LibraryWriteError(f"could not store images in the gallery {self.gallery_dir} ({exc}); nothing "
                                    "was added") from exc
        with self._lock:
            self._meta = Meta(meta.model, meta.model_name, meta.dim, next_id, version)  # type: ignore[union-attr]
            self._mirror = None  # reloaded when a whole-library task needs it
        for candidate, image_id, (near_id, sim) in zip(fresh, new_ids, near):
            candidate.data = None
            results[candidate.index] = AddResult(name=candidate.name, status="added", id=image_id,
                                                 near_duplicate_of=near_id, similarity=sim)
            log.info("added %s as %s", candidate.name, gal.id_file_name(image_id, candidate.ext))

    def _near_duplicates_sql(self, rows: torch.Tensor, new_ids: list[int]) -> list[tuple[int | None, float | None]]:
        """For new rows [M, D]: the most similar stored row (the store's nearest) or earlier row of this call, when
        over the threshold."""
        rows = rows.float().to(torch.float16).float()  # as they will be stored
        ids, scores = self.store.nearest(rows)
        best_id, best_sim = torch.tensor(ids, dtype=torch.int64), torch.tensor(scores)
        if len(rows) > 1:
            sims = (rows @ rows.T).masked_fill(torch.ones(len(rows), len(rows), dtype=torch.bool).triu(), -2.0)
            new_best, arg = sims.max(dim=1)
            better = new_best > best_sim
            best_sim = torch.where(better, new_best, best_sim)
            best_id = torch.where(better, torch.tensor(new_ids)[arg], best_id)
        return [(int(i), round(float(s), 4)) if i >= 0 and s >= self.near_duplicate_threshold else (None, None)
                for i, s in zip(best_id.tolist(), best_sim.tolist())]

    # ---- reading through SQL ----------------------------------------------------------------------------------
    def _entry_of(self, row: tuple) -> Entry:
        image_id, file, sha256, added, size, name = row
        return Entry(id=image_id, file=file, path=self.gallery_dir / file, sha256=sha256, added=added, size=size,
                     name=name)

    def get(self, id: int) -> Entry:
        rows = self.store.entries("id = %s", (int(id),))
        if not rows:
            raise UnknownImageError(f"no image with ID {id} in the library")
        return self._entry_of(rows[0])

    def find_sha256(self, sha256: str) -> int | None:
        return self.store.find_sha256(sha256.lower())

    def __len__(self) -> int:
        return self.store.count()

    def __iter__(self) -> Iterator[Entry]:
        return iter([self._entry_of(r) for r in self.store.entries("true", tail="ORDER BY id")])

    def page(self, page: int, per_page: int = 48) -> list[Entry]:
        if page < 1 or per_page < 1:
            raise ValueError("page and per_page start at 1")
        rows = self.store.entries("true", (per_page, (page - 1) * per_page), tail="ORDER BY id LIMIT %s OFFSET %s")
        return [self._entry_of(r) for r in rows]

    def search(self, query: torch.Tensor, k: int, exact: bool | None = None) -> list[tuple[Entry, float]]:
        """The k entries most similar to a unit query [D], best first (ties to the lower ID): HNSW above the store's
        row threshold (exact=True forces a scan), rescored like the file store."""
        self._refresh()
        self._require_model(self._meta)  # type: ignore[arg-type]
        return [(self._entry_of(row), score) for row, score in self.store.search_entries(query, k, exact=exact)]

    def stats(self) -> dict:
        self._refresh()
        meta = self._meta
        row = self.store._reader().execute(
            f"SELECT count(*), coalesce(sum(greatest(size, 0)), 0), pg_total_relation_size(%s) FROM {self.store.table}",
            (self.store.table,)).fetchone()
        return {"count": int(row[0]), "model": meta.model, "model_name": meta.model_name, "dim": meta.dim,  # type: ignore
                "file_size": int(row[2]), "journal_size": 0, "gallery_bytes": int(row[1]),
                "next_id": meta.next_id, "gallery_dir": str(self.gallery_dir),  # type: ignore[union-attr]
                "library_file": self.library_file, "journal_file": "", "store": "postgresql",
                "table": self.store.table, "hnsw_index": self.store.has_index()}

    # ---- what differs from a file ------------------------------------------------------------------------------
    def _scan(self) -> gal.GalleryScan:
        return gal.scan_gallery(self.gallery_dir, ())

    def index_command(self, command: str) -> str:
        source = getattr(self.encoder, "source", None) or self.encoder.name
        return index_command(command, source, self.gallery_dir, self.store.location.shown,
                             getattr(self.encoder, "model_dir", None))

    def private_paths(self) -> list[Path]:
        return [self.gallery_dir / gal.QUARANTINE_DIR]

    def _remove_stale_temp_files(self, report: RepairReport) -> None:
        found = [p for p in self.gallery_dir.glob(".*.partial") if _PARTIAL.match(p.name) and p.is_file()] \
            if self.gallery_dir.is_dir() else []
        for path in sorted(found):
            try:
                path.unlink()
            except OSError as exc:
                log.warning("could not delete the stale temp file %s (%s)", path, exc)
                continue
            report.actions.append(f"deleted {path.name}, left by a writer that stopped mid-save")

    def close(self) -> None:
        """Close the store's connections."""
        self.store.close()


class _SqlView:
    """What FeatureLibrary.add reads of the state (model stamp, sha256 -> ID), answered by SQL, not from memory."""

    def __init__(self, library: PgFeatureLibrary) -> None:
        meta = library._meta
        self.model, self.model_name, self.dim = meta.model, meta.model_name, meta.dim  # type: ignore[union-attr]
        self.id_of_hash = _HashLookup(library.store)


class _HashLookup:
    def __init__(self, store: PgStore) -> None:
        self.store = store

    def get(self, sha256: str, default: int | None = None) -> int | None:
        found = self.store.find_sha256(sha256)
        return default if found is None else found


class PgLabelSetStore(LabelSetStore):
    """Label sets kept as a companion document of a PostgreSQL library (same JSON as label_sets.json)."""

    def __init__(self, store: PgStore) -> None:
        super().__init__(Path(f"{store.location.shown} ({LABEL_SETS_DOCUMENT})"))
        self.store = store

    def _load(self) -> dict[str, list[str]]:
        raw = self.store.get_document(LABEL_SETS_DOCUMENT)
        if raw is None:
            return {}
        sets = raw.get("sets") if isinstance(raw, dict) else None
        if not isinstance(sets, dict):
            raise LabelSetError(f"the label sets of {self.store.location.shown} cannot be read; left untouched")
        return {k: list(v) for k, v in sets.items()}

    def _write(self, sets: dict[str, list[str]]) -> None:
        try:
            self.store.put_document(LABEL_SETS_DOCUMENT, {"version": LABEL_SETS_FORMAT, "sets": sets})
        except Exception as exc:
            raise LabelSetError(f"the label sets could not be saved: {exc}") from None


def open_feature_library(gallery_dir: Path | str, library: Path | str, encoder: ClipEncoder,
                         **kwargs: Any) -> FeatureLibrary:
    """A FeatureLibrary on a file, or on PostgreSQL for a postgresql:// URL."""
    if is_database_url(library):
        return PgFeatureLibrary(gallery_dir, str(library), encoder, **kwargs)
    return FeatureLibrary(gallery_dir, library, encoder, **kwargs)



def label_set_store(library: FeatureLibrary, location: Path | str) -> LabelSetStore:
    """The label sets of a library: a document in its PostgreSQL store, else label_sets.json beside the file."""
    if isinstance(library, PgFeatureLibrary):
        return PgLabelSetStore(library.store)
    from .label_sets import default_label_sets_file

    return LabelSetStore(default_label_sets_file(Path(location)))
