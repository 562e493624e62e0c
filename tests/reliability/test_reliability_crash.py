"""Writers killed with SIGKILL at random moments while they add and remove images: the library file always loads,
nothing that was reported stored is lost, and check/repair bring the gallery and the file back into agreement."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import torch

from tests.support.library_helpers import image_bytes, open_library
from tests.support.reliability_helpers import PRELOAD, crash_child

KILLS = 50


def read_journal(path: Path) -> tuple[dict[int, str], set[int], set[int]]:
    """(ID -> sha256 of every add that returned, IDs of every remove that returned, IDs of removes begun but not
    finished); a torn last line is ignored."""
    added: dict[int, str] = {}
    removed: set[int] = set()
    begun: set[int] = set()
    if not path.exists():
        return added, removed, begun
    for line in path.read_text().splitlines(keepends=True):
        if not line.endswith("\n"):
            continue
        parts = line.split()
        if parts[0] == "A":
            added[int(parts[1])] = parts[2]
        elif parts[0] == "r":
            begun.add(int(parts[1]))
        else:
            removed.add(int(parts[1]))
    return added, removed, begun - removed


def temp_files(root: Path) -> list[str]:
    """Names of the writers' temp files (library saves and gallery writes) lying around."""
    found = [p.name for p in root.iterdir() if p.name.endswith(".tmp")]
    gallery = root / "gallery"
    return found + ([p.name for p in gallery.iterdir() if p.name.endswith(".partial")] if gallery.exists() else [])


def test_writers_killed_at_random_moments_never_break_the_library(tmp_path: Path, colour_encoder) -> None:
    root = tmp_path / "lib"
    library_file = root / "features_library.pth"
    journal_file = root / "features_library.pth.journal"
    open_library(root, colour_encoder).add([(image_bytes("red"), "red.png")])
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)

    rng = random.Random(20240608)
    journal = tmp_path / "journal.txt"
    stats = {"orphans": 0, "dropped": 0, "temp_files": 0, "journals": 0, "calls": 0}
    started = time.monotonic()
    for kill in range(KILLS):
        compact_rows = 3 if kill % 2 else None  # every other writer rewrites the whole main file every few calls
        child = context.Process(target=crash_child, args=(str(root), 1000 * (kill + 1), str(journal), 4, compact_rows))
        child.start()
        time.sleep(rng.uniform(0.15, 0.7))
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert child.exitcode == -signal.SIGKILL, (kill, child.exitcode)

        raw = torch.load(library_file, weights_only=True)  # the file (and its journal) always load
        assert raw["ids"].tolist() == sorted(set(raw["ids"].tolist()))
        if journal_file.exists():
            stats["journals"] += 1
            torch.load(journal_file, weights_only=True)
        stats["temp_files"] += len(temp_files(root))
        library = open_library(root, colour_encoder)
        report = library.check()
        unexpected = [p for p in report.problems if p.kind not in ("orphan_file", "missing_file")]
        assert not unexpected, (kill, unexpected)
        stats["orphans"] += len(report.by_kind("orphan_file"))
        stats["dropped"] += len(report.by_kind("missing_file"))
        library.repair()  # also deletes the temp files the killed writer left
        after = library.check()
        assert after.ok, (kill, after.problems)
        assert temp_files(root) == [], kill

        added, removed, cut_short = read_journal(journal)
        stats["calls"] = len(added) + len(removed)
        entries = {e.id: e for e in library}
        for image_id, digest in added.items():  # nothing reported stored is lost, nothing removed comes back
            if image_id in removed:
                assert image_id not in entries, (kill, image_id)
            elif image_id not in cut_short:
                assert image_id in entries and entries[image_id].sha256 == digest, (kill, image_id)
        hashes = [e.sha256 for e in entries.values()]
        assert len(hashes) == len(set(hashes)), kill  # no duplicate content
        files = sorted(p.name for p in (root / "gallery").iterdir() if not p.name.startswith("."))
        assert files == sorted(e.file for e in entries.values())
    elapsed = time.monotonic() - started
    print(f"\n{KILLS} kills in {elapsed:.1f} s: {stats}")
    assert stats["calls"] >= KILLS  # the writers really were writing when they were killed
    assert stats["temp_files"] > 0 and stats["journals"] > 0  # some kills landed mid-save, and journals were used
    final = open_library(root, colour_encoder)
    assert final.check().ok and final.add([(image_bytes("blue"), "blue.png")]).results[0].status == "added"


def test_repair_deletes_only_the_temp_files_of_dead_writers(tmp_path: Path, colour_encoder) -> None:
    library = open_library(tmp_path, colour_encoder)
    library.add([(image_bytes("red"), "red.png")])
    gallery = tmp_path / "gallery"
    stale = [tmp_path / ".features_library.pth.k2j4h1x0.tmp", tmp_path / ".features_library.pth.journal.ab12cd34.tmp",
             gallery / ".000002.png.0a1b2c3d.partial"]
    kept = [tmp_path / ".other.pth.abc.tmp", gallery / ".DS_Store", gallery / ".notes.partial", tmp_path / "x.tmp"]
    for path in stale + kept:
        path.write_bytes(b"leftover")
    report = library.repair()
    assert [p for p in stale if p.exists()] == [] and all(p.exists() for p in kept)
    assert sum("left by a writer that stopped mid-save" in a for a in report.actions) == len(stale)
    assert library.check().ok and len(library) == 1
