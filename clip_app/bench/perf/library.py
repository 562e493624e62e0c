"""Performance figures of the feature library at scale: adding one image to a 100,000-row library (without the
forward pass), a bulk add (one save), search through the library, and load time + resident memory of 100,000 and
1,000,000 rows (each load in a fresh process).

Run as a module only by the benchmark itself: `python -m clip_app.bench.perf_library probe FILE GALLERY IDENTITY
NAME DIM` loads one library and prints its load time and memory as JSON.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

from ...encoders import ClipEncoder
from ...library import FeatureLibrary
from .encode import timed
from .setup import open_library, synthetic_state, unit_features
from .stats import Results, counting, peak_rss_bytes, rss_bytes

log = logging.getLogger(__name__)


def write_library(folder: Path, n: int, identity: str, name: str, dim: int) -> Path:
    """A library file of n synthetic rows (unit features, made-up hashes) written by the library's own code."""
    from ...library.store import save_library

    path = folder / "features_library.pth"
    shutil.rmtree(folder, ignore_errors=True)  # a fresh gallery too (a kept --workdir holds the last run's)
    (folder / "gallery").mkdir(parents=True)
    state = synthetic_state(identity, name, unit_features(n, dim, seed=7), added=time.time())
    save_library(state, path, None)
    return path


def add_without_forward(library: Any, items: Sequence[Path], encoder: ClipEncoder) -> tuple[float, float, int]:
    """(seconds of library.add(items) minus its forward passes, forward seconds, library saves) for one add call.

    A save is one atomic write: of the journal (small changes) or of a whole new main file (compaction).
    """
    forward: dict[str, float] = {}
    saves: dict[str, float] = {}
    with counting(encoder, "encode_pixels", forward), counting(library.store, "save", saves):
        took = timed(lambda: _added(library.add(list(items)), len(items)))
    return took - forward.get("seconds", 0.0), forward.get("seconds", 0.0), int(saves.get("calls", 0))


def _added(report: Any, expected: int) -> None:
    if len(report.added) != expected:
        raise RuntimeError(f"library add: {report.summary()}")


def measure_library(encoder: ClipEncoder, sizes: Sequence[int], add_size: int, photos: list[Path], batch: int,
                    repeats: int, k: int, results: Results, workdir: Path) -> None:
    """library.add_one.<N>, library.bulk_add.<N>, library.search.<N>, library.remove_one.<N>, library.compact.<N>,
    library.load.<N>, library.rss.<N>."""
    folder = workdir / f"library-{add_size}"
    write_library(folder, add_size, encoder.identity, encoder.name, encoder.dim)
    _measure_adds(encoder, folder, add_size, photos, batch, repeats, k, results)
    for n in sizes:
        if n < 100_000 and n != add_size:
            continue
        target = folder if n == add_size else workdir / f"library-{n}"
        path = target / "features_library.pth"
        if n != add_size:
            write_library(target, n, encoder.identity, encoder.name, encoder.dim)
        probes = [probe_in_subprocess(path, target / "gallery", encoder) for _ in range(repeats)]
        rows = probes[0]["rows"]
        results.add(f"library.load.{n}", f"library load, {rows:,} rows (fresh process)", "s",
                    [p["load_s"] for p in probes])
        results.add(f"library.rss.{n}", f"  resident memory added by the loaded library, {rows:,} rows", "MB",
                    [p["rss_delta"] / 2**20 for p in probes])
        results.facts[f"library.file_mb.{n}"] = round(path.stat().st_size / 2**20, 1)
        results.facts[f"library.peak_rss_mb.{n}"] = round(max(p["peak_rss"] for p in probes) / 2**20, 1)
        if n != add_size:
            shutil.rmtree(target, ignore_errors=True)


def _measure_adds(encoder: ClipEncoder, folder: Path, add_size: int, photos: list[Path], batch: int, repeats: int,
                  k: int, results: Results) -> None:
    """Adding one image (repeats times), one bulk add, and search, on the library in folder."""
    start = time.perf_counter()
    library = open_library(folder, encoder, batch)
    results.facts[f"library.open_in_process_s.{add_size}"] = round(time.perf_counter() - start, 3)
    if len(photos) < repeats + 1 + batch:
        raise ValueError("not enough photos for the library figures")
    singles, forwards, saves = [], [], []
    for r in range(repeats + 1):
        took, forward, saved = add_without_forward(library, [photos[r]], encoder)
        if r:  # the first add is a warm-up
            singles.append(took)
            forwards.append(forward)
            saves.append(saved)
    results.add(f"library.add_one.{add_size}", f"add 1 image to a {add_size:,}-row library, without the forward "
                "pass", "s", singles)
    results.add(f"library.add_one.forward.{add_size}", "  its forward pass (excluded above)", "s", forwards)
    results.facts[f"library.add_one.saves.{add_size}"] = saves
    bulk = photos[repeats + 1:repeats + 1 + batch]
    took, forward, saved = add_without_forward(library, bulk, encoder)
    results.add(f"library.bulk_add.{add_size}", f"bulk add of {len(bulk)} images in one call, without the forward "
                "pass", "s", [took])
    results.add(f"library.bulk_add.saves.{add_size}", "  saves of the library file during that bulk add", "count",
                [saved])
    query = unit_features(1, encoder.dim, seed=3)[0]
    library.search(query, k)
    results.add(f"library.search.{add_size}", f"FeatureLibrary.search top-{k}, {len(library):,} rows", "s",
                [timed(lambda: library.search(query, k)) for _ in range(max(repeats, 10))])
    ids = [entry.id for entry in library.page(1, repeats)]  # synthetic rows: remove allows their missing files
    results.add(f"library.remove_one.{add_size}", f"remove 1 image from a {len(library):,}-row library", "s",
                [timed(lambda image_id=image_id: library.remove([image_id])) for image_id in ids])
    with library.store.writing() as state:
        compact = timed(lambda: library.store.save(state, compact=True))
    results.add(f"library.compact.{add_size}", f"rewrite the whole {len(library):,}-row library file (compaction: "
                "repair, rebuild, a long journal)", "s", [compact])


def probe_in_subprocess(path: Path, gallery: Path, encoder: ClipEncoder) -> dict:
    """Load one library in a fresh Python process; its load seconds and resident memory (bytes)."""
    command = [sys.executable, "-m", "clip_app.bench.perf.library", "probe", str(path), str(gallery),
               encoder.identity, encoder.name, str(encoder.dim)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [_package_root(), os.environ.get("PYTHONPATH")]
                                                       if p))
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"library load probe failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[3])


def probe(path: Path, gallery: Path, identity: str, name: str, dim: int) -> dict:
    """Time FeatureLibrary(...) on an existing file; the encoder is a stand-in with the library's identity (loading
    a library reads only identity, name and dim), so the memory counted is the library's own."""
    stand_in = SimpleNamespace(identity=identity, name=name, dim=dim, loaded=True, source=name, model_dir=None)
    before = rss_bytes()
    start = time.perf_counter()
    library = FeatureLibrary(gallery, path, stand_in)  # type: ignore[arg-type]
    load_s = time.perf_counter() - start
    count = len(library)
    return {"load_s": load_s, "rss_delta": rss_bytes() - before, "peak_rss": peak_rss_bytes(), "rows": count}


def main(argv: list[str]) -> int:
    if len(argv) != 6 or argv[0] != "probe":
        print(__doc__, file=sys.stderr)
        return 2
    _, path, gallery, identity, name, dim = argv
    print(json.dumps(probe(Path(path), Path(gallery), identity, name, int(dim))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
