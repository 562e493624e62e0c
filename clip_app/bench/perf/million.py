"""Memory and load time of a library of a million rows: synthetic unit rows of width 512 saved as a real library
file, then opened by FeatureLibrary in a fresh process with a stand-in encoder (no model: only its identity and
width matter), searched once and checked once (without reading image files).

`python -m clip_app.bench.perf.million [--rows 1000000] [--dim 512] [--workdir DIR]` prints one JSON object:
rss_after_load_mb (resident memory once loaded, minus the process before loading), peak_rss_mb (the process's peak,
minus the same baseline), load_seconds, search_seconds, rss_after_search_mb (resident once searched and once looked
up by content hash, as the first search and the first add do: the lookup tables are made then), check_seconds,
peak_after_check_mb."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

IDENTITY = "synthetic-512"


class StandInEncoder:
    """What FeatureLibrary needs of an encoder to open, search and check a library: identity, name, width."""

    def __init__(self, dim: int) -> None:
        self.identity = self.name = IDENTITY
        self.dim = dim
        self.decode_min_side = 448
        self.loaded = True


def rss_mb() -> float:
    """Resident memory of this process now (MB), from /proc."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_mb() -> float:
    """The process's peak resident memory so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_library(path: Path, rows: int, dim: int, seed: int = 0) -> None:
    """A library file of `rows` synthetic unit rows (float16) with plausible file names and hashes."""
    from ...library.store import save_library
    from .setup import synthetic_state

    generator = torch.Generator().manual_seed(seed)
    features = torch.empty(rows, dim, dtype=torch.float16)
    for start in range(0, rows, 65536):
        block = torch.randn(min(65536, rows - start), dim, generator=generator)
        features[start:start + len(block)] = torch.nn.functional.normalize(block, dim=1).half()
    state = synthetic_state(IDENTITY, IDENTITY, features, size=3_000_000,
                            names=[f"IMG_{i:05d}.jpg" for i in range(rows)], seed=seed)
    del features
    save_library(state, path, None, compact=True)


def measure_open(path: Path, gallery: Path, dim: int) -> dict:
    """In this process: open the library, search it, check it (no file reads); the figures."""
    from ...library import FeatureLibrary

    base = rss_mb()
    start = time.perf_counter()
    library = FeatureLibrary(gallery, path, StandInEncoder(dim))  # type: ignore[arg-type]
    count = len(library)
    load = time.perf_counter() - start
    after_load = rss_mb() - base
    peak_load = peak_mb() - base
    query = torch.nn.functional.normalize(torch.randn(dim), dim=0)
    start = time.perf_counter()
    library.search(query, 12)
    search = time.perf_counter() - start
    library.find_sha256("0" * 64)
    after_search = rss_mb() - base
    start = time.perf_counter()
    library.check(hashes=False)
    check = time.perf_counter() - start
    return {"rows": count, "dim": dim, "rss_after_load_mb": round(after_load, 1), "peak_rss_mb": round(peak_load, 1),
            "load_seconds": round(load, 2), "search_seconds": round(search, 3),
            "rss_after_search_mb": round(after_search, 1), "check_seconds": round(check, 2),
            "peak_after_check_mb": round(peak_mb() - base, 1)}


def main(argv: list[str] | None = None) -> int:
    """Write the library (unless it is there), then measure it in a fresh process; print the figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m clip_app.bench.perf.million", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--workdir", default=None, help="where the library is written (kept; reused when present)")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the fresh process
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="clip-million-"))
    path = work / f"library-{args.rows}x{args.dim}.pth"
    if args.measure:
        print(json.dumps(measure_open(path, work / "gallery", args.dim)))
        return 0
    work.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        write_library(path, args.rows, args.dim)
    done = subprocess.run([sys.executable, "-m", "clip_app.bench.perf.million", "--rows", str(args.rows), "--dim",
                           str(args.dim), "--workdir", str(work), "--measure"], capture_output=True, text=True)
    if done.returncode:
        print(done.stderr, file=sys.stderr)
        return done.returncode
    print(done.stdout.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
