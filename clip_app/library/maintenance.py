"""Check, repair and rebuild of the feature library, and indexing of gallery files that have no row.

Functions over a FeatureLibrary's store, gallery folder and encoder (FeatureLibrary.check/repair/rebuild call them).

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
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import torch

from ..files import fsync_dir, move_no_clobber, regular_file_signature, sha256_file
from ..images import ImageError
from . import gallery as gal
from .ingest import Candidate, Counter, FileRead, GalleryReader, Progress
from .reports import CheckReport, Problem, RebuildReport, RepairReport
from .state import LibraryState

if TYPE_CHECKING:
    from .feature_library import FeatureLibrary

log = logging.getLogger(__name__)

_PARTIAL = re.compile(r"^\.\d{%d,}\.[A-Za-z0-9]{1,8}\.[0-9a-f]{8}\.partial$" % gal.ID_DIGITS)  # files.create_new
UNIT_TOLERANCE = 1e-2  # stored rows are float16: their norms are within ~1e-3 of 1


def row_norms(state: LibraryState) -> torch.Tensor:
    """Float32 [N]: the length of every stored row, computed in chunks (no float32 copy of the library)."""
    norms = torch.empty(len(state))
    for start, block in state.float_chunks():
        norms[start:start + len(block)] = block.norm(dim=1)
    return norms


def bad_rows(norms: torch.Tensor) -> torch.Tensor:
    """Bool [N]: rows whose lengths [N] are not 1 (or NaN/inf)."""
    return ~torch.isfinite(norms) | ((norms - 1).abs() > UNIT_TOLERANCE)


def check(lib: FeatureLibrary, hashes: bool = True, progress: Progress | None = None) -> CheckReport:
    """List every disagreement between folder, file and running model (hashes=False skips reading files)."""
    state = lib.store.current()
    problems: list[Problem] = []
    if state.model != lib.encoder.identity:
        problems.append(Problem("model_mismatch", None, None, f"the library was made with {state.model_name} "
                                f"({state.model}), the running model is {lib.encoder.name} "
                                f"({lib.encoder.identity}): run `{lib.index_command('rebuild')}`"))
    elif getattr(lib.encoder, "loaded", True) and int(state.dim) != int(lib.encoder.dim):
        problems.append(Problem("width_mismatch", None, None, f"the library says model {state.model_name} with "
                                f"{state.dim}-d features, but that model gives {lib.encoder.dim}-d features: the "
                                f"file is damaged; run `{lib.index_command('rebuild')}`"))
    norms = row_norms(state)
    bad_norm = bad_rows(norms).tolist()
    for row in range(len(state)):
        image_id, name = int(state.ids[row]), state.files[row]
        path = lib.gallery_dir / name
        odd = gal.not_a_file_reason(lib.gallery_dir, name)
        if odd is not None:
            kind = "link" if path.is_symlink() else "not_a_file"
            problems.append(Problem(kind, image_id, name, f"the file {name} of ID {image_id} is {odd}"))
        elif not path.is_file():
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
    scan = lib.scan()
    expected = set(state.files)
    for image_id, names in sorted(scan.id_files.items()):
        for name in names:
            if name not in expected and (lib.gallery_dir / name).is_symlink():
                problems.append(Problem("link", image_id, name, f"{name} is "
                                        f"{gal.not_a_file_reason(lib.gallery_dir, name)}; it has no row"))
            elif name not in expected:
                problems.append(Problem("orphan_file", image_id, name, f"{name} lies in the gallery but has no "
                                        "row in the library"))
    for name in scan.foreign:
        if name in expected:
            continue  # a row's file that is a folder: reported above
        kind = "folder" if (lib.gallery_dir / name).is_dir() else "file"
        problems.append(Problem("foreign_file", None, name, f"the {kind} {name} is not named by an image ID"))
    checked_files = sum(len(v) for v in scan.id_files.values()) + len(scan.foreign)
    return CheckReport(problems=problems, checked_rows=len(state), checked_files=checked_files)

def repair(lib: FeatureLibrary, progress: Progress | None = None) -> RepairReport:
    """Fix what check() finds: drop rows without files, re-encode changed or non-unit rows, index files without
    rows (new IDs, renamed into the ID scheme), move what cannot be indexed to gallery/.quarantine/."""
    snapshot = lib.store.current()
    lib.require_model(snapshot)
    reader = gallery_reader(lib)
    _repair_state(lib, snapshot, reader, RepairReport(), dry=True, progress=progress)  # the slow part, unlocked
    reader.stop_reporting()
    report = RepairReport()
    with lib.store.writing():
        state = lib.store.current()
        lib.require_model(state)
        _remove_stale_temp_files(lib, report)
        state = _repair_state(lib, state, reader, report, dry=False)
        if report.actions:
            lib.store.save(state, compact=True)
    for action in report.actions:
        log.info("repair: %s", action)
    return report

def gallery_reader(lib: FeatureLibrary, on_encoded: Callable[[int], None] | None = None) -> GalleryReader:
    return GalleryReader(lib.gallery_dir, lib.encoder, lib.batch_size, on_encoded)

def _repair_state(lib: FeatureLibrary, state: LibraryState, reader: GalleryReader, report: RepairReport, dry: bool,
                  progress: Progress | None = None) -> LibraryState:
    """The repaired state (dry: only read and encode what the repair needs, change nothing; progress(files
    read, files in all) is reported then)."""
    bad_norm = bad_rows(row_norms(state)).tolist()
    entries = candidates_from_scan(lib, state.files, lib.scan()) if dry else []
    tick = Counter(progress, len(state) + len(entries))

    drop: list[int] = []
    redo: list[tuple[int, FileRead]] = []
    hashes = dict(state.id_of_hash.items())  # content -> ID, as the repaired state will hold it
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
            odd = gal.not_a_file_reason(lib.gallery_dir, name)
            if odd is None:
                report.actions.append(f"dropped the row of ID {image_id}: its file {name} is gone")
            elif not dry:
                moved = _quarantine(lib, report, name)
                report.actions.append(f"dropped the row of ID {image_id}: its file {name} is {odd}; moved it to "
                                      f"{moved}")
            continue
        if found.sha256 == stored and not bad_norm[row]:
            continue
        owner = hashes.get(found.sha256)
        if found.sha256 != stored and owner is not None and owner != image_id:
            drop.append(image_id)  # two rows must never hold the same bytes
            if not dry:
                moved = _quarantine(lib, report, name)
                report.actions.append(f"dropped ID {image_id}: its file {name} changed and now holds the same bytes "
                                      f"as ID {owner}; moved the file to {moved}")
            continue
        hashes[found.sha256] = image_id
        why = "its file changed" if found.sha256 != stored else "its row was not unit length"
        if found.error is not None:
            drop.append(image_id)
            if not dry:
                moved = _quarantine(lib, report, name)
                report.actions.append(f"dropped ID {image_id} ({why}, and it is no longer a usable image: "
                                      f"{found.error.reason}); moved the file to {moved}")
            continue
        redo.append((image_id, found))
        report.actions.append(f"re-encoded ID {image_id} ({why})")
    reader.flush()
    if dry:
        index_files(lib, state, entries, report, reader, quarantine_rest=True, dry=True, tick=tick)
        return state
    state = state.without(drop) if drop else state
    if redo:
        state = state.with_rows([i for i, _ in redo], torch.stack([r.feature for _, r in redo]),  # type: ignore
                                [r.sha256 for _, r in redo], [r.size for _, r in redo])
    report.dropped, report.reencoded = drop, [i for i, _ in redo]
    return index_files(lib, state, candidates_from_scan(lib, state.files, lib.scan()), report, reader,
                             quarantine_rest=True)

def _quarantine(lib: FeatureLibrary, report: RepairReport, name: str) -> str:
    """Move a gallery file into the quarantine folder and record it in the report; its new relative path."""
    moved = gal.quarantine(lib.gallery_dir, name)
    report.quarantined.append(moved)
    return moved


def _remove_stale_temp_files(lib: FeatureLibrary, report: RepairReport) -> None:
    """Delete the temp files of writers that died mid-save (a library save's `.<file>.*.tmp`, a gallery write's
    `.<ID file>.<hex>.partial`). Called under the write lock: every live writer holds it while its temp files
    exist, so any found now are stale."""
    library = lib.library_file
    found = [p for p in library.parent.glob(f".{glob.escape(library.name)}.*.tmp") if p.is_file()] \
        if isinstance(library, Path) else []  # a database store leaves no temp files
    if lib.gallery_dir.is_dir():
        found += [p for p in lib.gallery_dir.glob(".*.partial") if _PARTIAL.match(p.name) and p.is_file()]
    for path in sorted(found):
        try:
            path.unlink()
        except OSError as exc:
            log.warning("could not delete the stale temp file %s (%s)", path, exc)
            continue
        report.actions.append(f"deleted {path.name}, left by a writer that stopped mid-save")

def rebuild(lib: FeatureLibrary, progress: Progress | None = None) -> RebuildReport:
    """Re-encode every gallery image with the running model into a new file, swapped in atomically."""
    snapshot = lib.store.current()
    advance = Counter(progress, len(snapshot))

    reader = gallery_reader(lib, advance)
    _rebuild_state(lib, snapshot, reader, RebuildReport(snapshot.model, lib.encoder.identity, 0), advance,
                        dry=True)  # the slow part, outside the locks
    reader.stop_reporting()
    with lib.store.writing():
        old = lib.store.current()
        report = RebuildReport(previous_model=old.model, model=lib.encoder.identity, count=0)
        state = _rebuild_state(lib, old, reader, report, None, dry=False)
        lib.store.save(state, compact=True)
        lib.check_model = True
        report.count = len(state)
    log.info("rebuilt %s with %s: %d rows", lib.library_file, lib.encoder.identity, report.count)
    return report

def _rebuild_state(lib: FeatureLibrary, old: LibraryState, reader: GalleryReader, report: RebuildReport,
                   advance: Callable[[int], None] | None, dry: bool) -> LibraryState:
    """A new state of the running model from the gallery files of `old` (dry: only read and encode them)."""
    kept: list[tuple[int, FileRead]] = []
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
    state = LibraryState.empty(lib.encoder.identity, lib.encoder.name, lib.encoder.dim)
    state.next_id = old.next_id
    if kept and not dry:
        state = state.appended(
            [int(old.ids[r]) for r, _ in kept], torch.stack([f.feature for _, f in kept]),  # type: ignore[misc]
            [f.name for _, f in kept], [f.sha256 for _, f in kept], [f.size for _, f in kept],
            [old.names[r] for r, _ in kept], added=[float(old.added[r]) for r, _ in kept])
    report.reencoded = [int(old.ids[r]) for r, _ in kept]
    extra = RepairReport()
    entries = candidates_from_scan(lib, [f.name for _, f in kept], lib.scan())
    state = index_files(lib, state, entries, extra, reader, quarantine_rest=False, dry=dry)
    report.indexed, report.actions = extra.indexed, report.actions + extra.actions
    return state

# ---- indexing files that lie in the gallery without a row -------------------------------------------
def candidates_from_scan(lib: FeatureLibrary, files: Iterable[str],
                         scan: gal.GalleryScan) -> list[tuple[str, int | None]]:
    """(file name, ID from its name or None) of every non-ignored gallery entry that is not one of the rows'
    files."""
    expected = set(files)
    out = [(name, image_id) for image_id, names in sorted(scan.id_files.items()) for name in names
           if name not in expected]
    return out + [(name, None) for name in scan.foreign]

def index_files(lib: FeatureLibrary, state: LibraryState, entries: list[tuple[str, int | None]], report: RepairReport,
                 reader: GalleryReader, quarantine_rest: bool, dry: bool = False,
                 tick: Callable[[], None] | None = None) -> LibraryState:
    """Give rows to gallery files that have none. An ID-shaped name keeps its ID when that ID was never issued
    (>= next_id); other images get new IDs and are renamed into the ID scheme (same bytes, no copy). Entries
    that cannot be indexed (not images, duplicates, folders) move to .quarantine/ when quarantine_rest is true,
    else stay where they are. dry: only read and encode the files, change nothing."""
    chosen: list[tuple[FileRead, int | None]] = []
    seen = {digest: f"ID {image_id}" for digest, image_id in state.id_of_hash.items()}

    def set_aside(name: str, why: str) -> None:
        if dry:
            return
        if quarantine_rest:
            moved = _quarantine(lib, report, name)
            report.actions.append(f"moved {name} to {moved}: {why}")
        else:
            log.info("not indexing %s: %s", name, why)

    for name, id_hint in entries:
        if tick:
            tick()
        odd = gal.not_a_file_reason(lib.gallery_dir, name)
        if odd is not None:
            set_aside(name, odd)
            continue
        if id_hint is None and not gal.has_image_extension(name):
            set_aside(name, "not a regular file" if regular_file_signature(lib.gallery_dir / name) is None
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
    candidates = [Candidate(index=-1, name=f.name, sha256=f.sha256, ext=f.ext, size=f.size, source=f.name,
                             id_hint=hint, feature=f.feature) for f, hint in chosen]
    issued_below = state.next_id  # IDs below this were given before: never reuse them
    taken: set[int] = set(state.row_of)
    for candidate in candidates:  # first: names whose ID was never issued keep it
        hint = candidate.id_hint
        if hint is not None and hint >= issued_below and hint not in taken:
            target = gal.id_file_name(hint, candidate.ext)
            if target == candidate.source or not os.path.lexists(lib.gallery_dir / target):
                candidate.index = hint
                taken.add(hint)
    next_id = max([state.next_id] + [c.index + 1 for c in candidates if c.index >= 0])
    for candidate in candidates:
        if candidate.index < 0:
            while next_id in taken or gal.id_taken_on_disk(lib.gallery_dir, next_id):
                next_id += 1
            candidate.index = next_id
            taken.add(next_id)
            next_id += 1
    ids, files = [], []
    for candidate in sorted(candidates, key=lambda c: c.index):
        target = gal.id_file_name(candidate.index, candidate.ext)
        if target != candidate.source:
            move_no_clobber(lib.gallery_dir / candidate.source, lib.gallery_dir / target)  # type: ignore
            report.actions.append(f"indexed {candidate.source} as ID {candidate.index} (renamed to {target})")
        else:
            report.actions.append(f"indexed {target} as ID {candidate.index}")
        ids.append(candidate.index)
        files.append(target)
        report.indexed.append(candidate.index)
    fsync_dir(lib.gallery_dir)
    ordered = sorted(candidates, key=lambda c: c.index)
    state = state.appended(ids, torch.stack([c.feature for c in ordered]), files,  # type: ignore[misc]
                           [c.sha256 for c in ordered], [c.size for c in ordered],
                           [c.source or "" for c in ordered])
    state.next_id = max(state.next_id, next_id)
    return state
