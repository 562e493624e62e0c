"""Check, repair and rebuild of the feature library, and indexing of gallery files that have no row.

A mixin of FeatureLibrary (clip_app.library): it uses the library's lock, state, scan and save.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from PIL import Image

from . import gallery as gal
from .images import ImageError, decode_image, image_extension, read_bytes
from .library_file import LibraryState, fsync_dir
from .library_reports import CheckReport, Problem, RebuildReport, RepairReport
from .model import ClipEncoder

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
        self.pending: list[tuple[_Candidate, torch.Tensor]] = []

    def push(self, candidate: _Candidate, image: Image.Image) -> None:
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


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


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

    def check(self, hashes: bool = True, progress: Progress | None = None) -> CheckReport:
        """List every disagreement between folder, file and running model (hashes=False skips reading files)."""
        state = self._current()
        problems: list[Problem] = []
        if state.model != self.encoder.identity:
            problems.append(Problem("model_mismatch", None, None, f"the library was made with {state.model_name} "
                                    f"({state.model}), the running model is {self.encoder.name} "
                                    f"({self.encoder.identity}): run `python -m clip_app.index rebuild`"))
        norms = state.features.norm(dim=1) if len(state) else torch.empty(0)
        bad_norm = bad_rows(state.features).tolist()
        for row in range(len(state)):
            image_id, name = int(state.ids[row]), state.files[row]
            path = self.gallery_dir / name
            if not path.is_file():
                problems.append(Problem("missing_file", image_id, name, f"ID {image_id} has a row but its file "
                                        f"{name} is missing"))
            elif hashes:
                digest = file_sha256(path)
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
        report = RepairReport()
        with self._writing():
            state = self._state
            self._require_model(state)
            self._remove_stale_temp_files(report)
            bad_norm = bad_rows(state.features).tolist()
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
                    image = decode_image(data, name, min_side=self.encoder.decode_min_side)
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
                self._save(state, compact=True)
        for action in report.actions:
            log.info("repair: %s", action)
        return report

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
                    image = decode_image(data, name, min_side=self.encoder.decode_min_side)
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
            self._save(state, compact=True)
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
                image = decode_image(data, name, min_side=self.encoder.decode_min_side)
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
