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
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from .library_file import (
    JOURNAL_RECOVERY,
    LibraryCorruptError,
    LibraryState,
    file_signature,
    fsync_dir,
    load_raw,
    parse_state,
    save_state,
    sorted_member,
)

log = logging.getLogger(__name__)

TAGS_SUFFIX = ".tags"  # the library's tags (tags.py): features_library.pth.tags
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
    return [path, lock_path(path), journal_path(path), path.with_name(LABEL_SETS_NAME),
            path.with_name(path.name + TAGS_SUFFIX)]


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

