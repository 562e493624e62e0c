"""Check, repair and rebuild of the feature library, and indexing of gallery files that have no row.

A mixin of FeatureLibrary (clip_app.library): it uses the library's lock, state, scan and save.

repair() and rebuild() do their slow work (reading, hashing, decoding and encoding every file) on a snapshot of the
library, outside every lock, so that searches and other writers are not held up. Then, under the write lock, the
same steps run again on the current state with what was read: a file whose (inode, mtime, size) did not change
is not read again, so only files that changed meanwhile (or rows another writer added) are read and encoded there.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch
from PIL import Image

from . import gallery as gal
from .encoders import ClipEncoder
from .files import regular_file_signature, sha256_bytes, sha256_file
from .images import ImageError, decode_image, image_extension, read_bytes
from .library_file import LibraryState, fsync_dir
from .library_reports import CheckReport, Problem, RebuildReport, RepairReport

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

log = logging.getLogger("clip_app.library")

Progress = Callable[[int, int], None]
_PARTIAL = re.compile(r"^\.\d{%d,}\.[A-Za-z0-9]{1,8}\.[0-9a-f]{8}\.partial$" % gal.ID_DIGITS)  # gallery.write_new_file
UNIT_TOLERANCE = 1e-2  # stored rows are float16: their norms are within ~1e-3 of 1


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
    """Preprocesses decoded images at once (a full-size photo is dropped right away; only its model input
    [3, H, W] waits) and encodes them batch_size at a time into their candidates' .feature."""

    def __init__(self, encoder: ClipEncoder, batch_size: int, on_done: Callable[[int], None] | None = None) -> None:
        self.encoder, self.batch_size, self.on_done = encoder, batch_size, on_done
        self.pending: list[tuple[Any, torch.Tensor]] = []

    def push(self, candidate: Any, image: Image.Image) -> None:
        """Queue an image; its feature [D] lands in candidate.feature when its batch is encoded."""
        self.pending.append((candidate, self.encoder.preprocess(image)))
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        rows = self.encoder.encode_pixels(torch.stack([pixels for _, pixels in self.pending]))
        for (candidate, _), row in zip(self.pending, rows):
            candidate.feature = row
        if self.on_done:
            self.on_done(len(self.pending))
        self.pending = []


@dataclass
class _FileRead:
    """One gallery file as read: its (inode, mtime, size) at that moment, sha256 and size; after a decoding read also
    its format and, once encoded, its feature [D], or the ImageError saying why it is not a usable image."""

    name: str
    signature: tuple[int, int, int]
    sha256: str
    size: int
    decoded: bool = False
    ext: str = ""
    feature: torch.Tensor | None = None
    error: ImageError | None = None


class _GalleryReader:
    """Reads gallery files for repair and rebuild, each once: a read (hash, and when asked decoding and batched
    encoding) is reused as long as the file's (inode, mtime, size) is unchanged. So the work done on a snapshot outside
    the write lock is not redone under it; only files that changed since are read again."""

    def __init__(self, folder: Path, encoder: ClipEncoder, batch_size: int,
                 on_encoded: Callable[[int], None] | None = None) -> None:
        self.folder, self.encoder = folder, encoder
        self._batcher = _Batcher(encoder, batch_size, on_encoded)
        self._known: dict[str, _FileRead] = {}

    def stop_reporting(self) -> None:
        """No more progress callbacks (the work under the lock is not part of the progress shown)."""
        self._batcher.on_done = None

    def read(self, name: str, decode: bool | Callable[[_FileRead], bool] = False) -> _FileRead | None:
        """The file's hash and size; None when it is not a regular file (missing, a folder); ImageError when it
        cannot be read. decode (or decode(read) returning True): also decode it and queue it for encoding (see
        flush); a decoding failure is kept in .error."""
        path = self.folder / name
        signature = regular_file_signature(path)
        if signature is None:
            return None
        known = self._known.get(name)
        if known is not None and known.signature == signature and (known.decoded or not _wants(decode, known)):
            return known
        data, _ = read_bytes(path, name)
        found = _FileRead(name=name, signature=signature, sha256=sha256_bytes(data), size=len(data))
        if _wants(decode, found):
            found.decoded = True
            try:
                found.ext = image_extension(data, name)
                image = decode_image(data, name, min_side=self.encoder.decode_min_side)
            except ImageError as exc:
                found.error = exc
            else:
                self._batcher.push(found, image)
        self._known[name] = found
        return found

    def flush(self) -> None:
        """Encode what is queued: every decoded read has its feature afterwards."""
        self._batcher.flush()


def _wants(decode: bool | Callable[[_FileRead], bool], found: _FileRead) -> bool:
    return decode(found) if callable(decode) else bool(decode)


def bad_rows(features: torch.Tensor) -> torch.Tensor:
    """Bool [N]: rows [N, D] that are not unit length (or hold NaN/inf)."""
    if not len(features):
        return torch.zeros(0, dtype=torch.bool)
    norms = features.norm(dim=1)
    return ~torch.isfinite(norms) | ((norms - 1).abs() > UNIT_TOLERANCE)


class LibraryMaintenance:
    """check / repair / rebuild for FeatureLibrary (which provides the attributes below)."""

    encoder: ClipEncoder
    gallery_dir: Path
    library_file: Path
    batch_size: int
    _state: LibraryState
    _check_model: bool

    if TYPE_CHECKING:
        def _writing(self) -> AbstractContextManager[None]: ...
        def _current(self) -> LibraryState: ...
        def _save(self, state: LibraryState, compact: bool = False) -> None: ...
        def _require_model(self, state: LibraryState) -> None: ...
        def _scan(self) -> gal.GalleryScan: ...
        def index_command(self, command: str) -> str: ...

    def check(self, hashes: bool = True, progress: Progress | None = None) -> CheckReport:
        """List every disagreement between folder, file and running model (hashes=False skips reading files)."""
        state = self._current()
        problems: list[Problem] = []
        if state.model != self.encoder.identity:
            problems.append(Problem("model_mismatch", None, None, f"the library was made with {state.model_name} "
                                    f"({state.model}), the running model is {self.encoder.name} "
                                    f"({self.encoder.identity}): run `{self.index_command('rebuild')}`"))
        norms = state.features.norm(dim=1) if len(state) else torch.empty(0)
        bad_norm = bad_rows(state.features).tolist()
        for row in range(len(state)):
            image_id, name = int(state.ids[row]), state.files[row]
            path = self.gallery_dir / name
            if not path.is_file():
                problems.append(Problem("missing_file", image_id, name, f"ID {image_id} has a row but its file "
                                        f"{name} is missing"))
            elif hashes:
                digest = sha256_file(path)
                if digest != state.sha256[row]:
                    problems.append(Problem("hash_mismatch", image_id, name, f"{name} changed since it was added "
                                            f"(sha256 {digest[:12]}..., stored {state.sha256[row][:12]}...)"))
            if bad_norm[row]:
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
        snapshot = self._current()
        self._require_model(snapshot)
        reader = self._reader()
        self._repair_state(snapshot, reader, RepairReport(), dry=True, progress=progress)  # the slow part, unlocked
        reader.stop_reporting()
        report = RepairReport()
        with self._writing():
            state = self._state
            self._require_model(state)
            self._remove_stale_temp_files(report)
            state = self._repair_state(state, reader, report, dry=False)
            if report.actions:
                self._save(state, compact=True)
        for action in report.actions:
            log.info("repair: %s", action)
        return report

    def _reader(self, on_encoded: Callable[[int], None] | None = None) -> _GalleryReader:
        return _GalleryReader(self.gallery_dir, self.encoder, self.batch_size, on_encoded)

    def _repair_state(self, state: LibraryState, reader: _GalleryReader, report: RepairReport, dry: bool,
                      progress: Progress | None = None) -> LibraryState:
        """The repaired state (dry: only read and encode what the repair needs, change nothing; progress(files
        read, files in all) is reported then)."""
        bad_norm = bad_rows(state.features).tolist()
        entries = self._candidates_from_scan(state.files, self._scan()) if dry else []
        total, done = len(state) + len(entries), 0

        def tick() -> None:
            nonlocal done
            done += 1
            if progress:
                progress(done, total)

        drop: list[int] = []
        redo: list[tuple[int, _FileRead]] = []
        for row in range(len(state)):
            image_id, name = int(state.ids[row]), state.files[row]
            stored = state.sha256[row]
            if dry:
                tick()
            try:
                found = reader.read(name, decode=lambda r, s=stored, b=bad_norm[row]: r.sha256 != s or b)
            except ImageError:
                if dry:
                    continue
                raise
            if found is None:
                drop.append(image_id)
                report.actions.append(f"dropped the row of ID {image_id}: its file {name} is gone")
                continue
            if found.sha256 == stored and not bad_norm[row]:
                continue
            why = "its file changed" if found.sha256 != stored else "its row was not unit length"
            if found.error is not None:
                drop.append(image_id)
                if not dry:
                    moved = gal.quarantine(self.gallery_dir, name)
                    report.quarantined.append(moved)
                    report.actions.append(f"dropped ID {image_id} ({why}, and it is no longer a usable image: "
                                          f"{found.error.reason}); moved the file to {moved}")
                continue
            redo.append((image_id, found))
            report.actions.append(f"re-encoded ID {image_id} ({why})")
        reader.flush()
        if dry:
            self._index_files(state, entries, report, reader, quarantine_rest=True, dry=True, tick=tick)
            return state
        state = state.without(drop) if drop else state
        if redo:
            state = state.with_rows([i for i, _ in redo], torch.stack([r.feature for _, r in redo]),  # type: ignore
                                    [r.sha256 for _, r in redo], [r.size for _, r in redo])
        report.dropped, report.reencoded = drop, [i for i, _ in redo]
        return self._index_files(state, self._candidates_from_scan(state.files, self._scan()), report, reader,
                                 quarantine_rest=True)

    def _remove_stale_temp_files(self, report: RepairReport) -> None:
        """Delete the temp files of writers that died mid-save (a library save's `.<file>.*.tmp`, a gallery write's
        `.<ID file>.<hex>.partial`). Called under the write lock: every live writer holds it while its temp files
        exist, so any found now are stale."""
        library = self.library_file
        found = [p for p in library.parent.glob(f".{glob.escape(library.name)}.*.tmp") if p.is_file()]
        if self.gallery_dir.is_dir():
            found += [p for p in self.gallery_dir.glob(".*.partial") if _PARTIAL.match(p.name) and p.is_file()]
        for path in sorted(found):
            try:
                path.unlink()
            except OSError as exc:
                log.warning("could not delete the stale temp file %s (%s)", path, exc)
                continue
            report.actions.append(f"deleted {path.name}, left by a writer that stopped mid-save")

    def rebuild(self, progress: Progress | None = None) -> RebuildReport:
        """Re-encode every gallery image with the running model into a new file, swapped in atomically."""
        snapshot = self._current()
        total = len(snapshot)
        done = 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            if progress:
                progress(min(done, total), total)

        reader = self._reader(advance)
        self._rebuild_state(snapshot, reader, RebuildReport(snapshot.model, self.encoder.identity, 0), advance,
                            dry=True)  # the slow part, outside the locks
        reader.stop_reporting()
        with self._writing():
            old = self._state
            report = RebuildReport(previous_model=old.model, model=self.encoder.identity, count=0)
            state = self._rebuild_state(old, reader, report, None, dry=False)
            self._save(state, compact=True)
            self._check_model = True
            report.count = len(state)
        log.info("rebuilt %s with %s: %d rows", self.library_file, self.encoder.identity, report.count)
        return report

    def _rebuild_state(self, old: LibraryState, reader: _GalleryReader, report: RebuildReport,
                       advance: Callable[[int], None] | None, dry: bool) -> LibraryState:
        """A new state of the running model from the gallery files of `old` (dry: only read and encode them)."""
        kept: list[tuple[int, _FileRead]] = []
        for row in range(len(old)):
            image_id, name = int(old.ids[row]), old.files[row]
            try:
                found = reader.read(name, decode=True)
                if found is None:
                    raise ImageError(name, "file not found")
                if found.error is not None:
                    raise found.error
            except ImageError as exc:
                report.dropped.append(image_id)
                report.actions.append(f"dropped ID {image_id}: {exc}")
                if advance:
                    advance(1)
                continue
            kept.append((row, found))
        reader.flush()
        state = LibraryState.empty(self.encoder.identity, self.encoder.name, self.encoder.dim)
        state.next_id = old.next_id
        if kept and not dry:
            state = state.appended(
                [int(old.ids[r]) for r, _ in kept], torch.stack([f.feature for _, f in kept]),  # type: ignore[misc]
                [f.name for _, f in kept], [f.sha256 for _, f in kept], [f.size for _, f in kept],
                [old.names[r] for r, _ in kept], added=[float(old.added[r]) for r, _ in kept])
        report.reencoded = [int(old.ids[r]) for r, _ in kept]
        extra = RepairReport()
        entries = self._candidates_from_scan([f.name for _, f in kept], self._scan())
        state = self._index_files(state, entries, extra, reader, quarantine_rest=False, dry=dry)
        report.indexed, report.actions = extra.indexed, report.actions + extra.actions
        return state

    # ---- indexing files that lie in the gallery without a row -------------------------------------------
    def _candidates_from_scan(self, files: Iterable[str], scan: gal.GalleryScan) -> list[tuple[str, int | None]]:
        """(file name, ID from its name or None) of every non-ignored gallery entry that is not one of the rows'
        files."""
        expected = set(files)
        out = [(name, image_id) for image_id, names in sorted(scan.id_files.items()) for name in names
               if name not in expected]
        return out + [(name, None) for name in scan.foreign]

    def _index_files(self, state: LibraryState, entries: list[tuple[str, int | None]], report: RepairReport,
                     reader: _GalleryReader, quarantine_rest: bool, dry: bool = False,
                     tick: Callable[[], None] | None = None) -> LibraryState:
        """Give rows to gallery files that have none. An ID-shaped name keeps its ID when that ID was never issued
        (>= next_id); other images get new IDs and are renamed into the ID scheme (same bytes, no copy). Entries
        that cannot be indexed (not images, duplicates, folders) move to .quarantine/ when quarantine_rest is true,
        else stay where they are. dry: only read and encode the files, change nothing."""
        chosen: list[tuple[_FileRead, int | None]] = []
        seen = {digest: f"ID {image_id}" for digest, image_id in state.id_of_hash.items()}

        def set_aside(name: str, why: str) -> None:
            if dry:
                return
            if quarantine_rest:
                moved = gal.quarantine(self.gallery_dir, name)
                report.quarantined.append(moved)
                report.actions.append(f"moved {name} to {moved}: {why}")
            else:
                log.info("not indexing %s: %s", name, why)

        for name, id_hint in entries:
            if tick:
                tick()
            if id_hint is None and not gal.has_image_extension(name):
                set_aside(name, "not a regular file" if regular_file_signature(self.gallery_dir / name) is None
                          else "not an image file name")
                continue
            try:
                found = reader.read(name, decode=lambda r: r.sha256 not in seen)
            except ImageError as exc:
                set_aside(name, f"not a usable image ({exc.reason})")
                continue
            if found is None:
                set_aside(name, "not a regular file")
                continue
            if found.sha256 in seen:
                set_aside(name, f"the same bytes are already in the library as {seen[found.sha256]}")
                continue
            if found.error is not None:
                set_aside(name, f"not a usable image ({found.error.reason})")
                continue
            seen[found.sha256] = name
            chosen.append((found, id_hint))
        reader.flush()
        if dry or not chosen:
            return state
        candidates = [_Candidate(index=-1, name=f.name, sha256=f.sha256, ext=f.ext, size=f.size, source=f.name,
                                 id_hint=hint, feature=f.feature) for f, hint in chosen]
        issued_below = state.next_id  # IDs below this were given before: never reuse them
        taken: set[int] = set(state.row_of)
        for candidate in candidates:  # first: names whose ID was never issued keep it
            hint = candidate.id_hint
            if hint is not None and hint >= issued_below and hint not in taken:
                target = gal.id_file_name(hint, candidate.ext)
                if target == candidate.source or not os.path.lexists(self.gallery_dir / target):
                    candidate.index = hint
                    taken.add(hint)
        next_id = max([state.next_id] + [c.index + 1 for c in candidates if c.index >= 0])
        for candidate in candidates:
            if candidate.index < 0:
                while next_id in taken or gal.id_taken_on_disk(self.gallery_dir, next_id):
                    next_id += 1
                candidate.index = next_id
                taken.add(next_id)
                next_id += 1
        ids, files = [], []
        for candidate in sorted(candidates, key=lambda c: c.index):
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
        ordered = sorted(candidates, key=lambda c: c.index)
        state = state.appended(ids, torch.stack([c.feature for c in ordered]), files,  # type: ignore[misc]
                               [c.sha256 for c in ordered], [c.size for c in ordered],
                               [c.source or "" for c in ordered])
        state.next_id = max(state.next_id, next_id)
        return state
