"""Feature library costs without the CLIP forward pass: add or remove one image in libraries of N rows, file size,
load time.

    .venv/bin/python scripts/library_bench.py [--sizes 10000 100000] [--dim 512] [--repeats 5] [--dir DIR]

A synthetic library of N unit rows (float16 on disk, as the app stores them) is written with the real save code;
a fake encoder (a fixed random projection of the mean colour, microseconds per image) stands in for CLIP, so the
times are the library's own: hashing, decoding a small image, the duplicate and near-duplicate checks, writing the
gallery file, and the atomic save (temp file, fsync, os.replace) of the whole library file.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

from clip_app.encoders import ClipEncoder  # noqa: E402
from clip_app.library import FeatureLibrary  # noqa: E402
from clip_app.library_file import LibraryState, load_state, save_state  # noqa: E402
from clip_app.library_store import save_library  # noqa: E402


class _FakeClip(torch.nn.Module):
    """Mean colour -> fixed random projection to `dim`: stands in for CLIP at no cost."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("projection", torch.randn(3, dim, generator=generator))
        self.dtype = torch.float32
        self.dim = dim

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float().mean(dim=(2, 3)) @ self.projection + 1e-3

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(tokens), self.dim)


def fake_encoder(dim: int) -> ClipEncoder:
    """A real ClipEncoder around the fake model (32 px preprocessing)."""
    from clip.clip import _transform

    return ClipEncoder.from_model(_FakeClip(dim), _transform(32), name=f"fake-{dim}")


def synthetic_library(path: Path, encoder: ClipEncoder, rows: int, seed: int = 0) -> None:
    """Write a library file of `rows` random unit rows under IDs 1..rows (no gallery files)."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(rows, encoder.dim, generator=generator)
    features = features / features.norm(dim=1, keepdim=True)
    ids = list(range(1, rows + 1))
    state = LibraryState.empty(encoder.identity, encoder.name, encoder.dim).appended(
        ids, features, [f"{i:06d}.jpg" for i in ids], [f"{i:064x}" for i in ids], [150_000] * rows,
        [f"IMG_{i:05d}.jpg" for i in ids], added=time.time())
    save_library(state, path, None, compact=True)  # as the library writes a whole file


def png_bytes(index: int) -> bytes:
    """A small distinct image."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), ((index * 37) % 256, (index * 91) % 256, (index * 13) % 256)).save(buffer, "PNG")
    return buffer.getvalue()


def measure(rows: int, dim: int, repeats: int, folder: Path) -> dict:
    """Times (seconds) and sizes for one library size."""
    encoder = fake_encoder(dim)
    path = folder / f"lib-{rows}.pth"
    synthetic_library(path, encoder, rows)
    size = path.stat().st_size
    start = time.perf_counter()
    torch.load(path, weights_only=True)
    raw_load = time.perf_counter() - start
    start = time.perf_counter()
    load_state(path)
    state_load = time.perf_counter() - start
    start = time.perf_counter()
    library = FeatureLibrary(folder / f"gallery-{rows}", path, encoder)
    open_time = time.perf_counter() - start
    start = time.perf_counter()
    library.find_sha256("0" * 64)  # builds the hash index (once per process, on the first add or lookup)
    index_time = time.perf_counter() - start
    adds = []
    for k in range(repeats):
        data = png_bytes(k)
        start = time.perf_counter()
        report = library.add([(data, f"new-{k}.png")])
        adds.append(time.perf_counter() - start)
        assert report.added, report.summary()
    removes = []
    for k in range(repeats):  # rows of the synthetic part: their gallery files do not exist, which remove allows
        start = time.perf_counter()
        library.remove([rows // 2 + k])
        removes.append(time.perf_counter() - start)
    start = time.perf_counter()  # the first add after removals also makes the float32 copy of the rows again
    assert library.add([(png_bytes(repeats), "after-removals.png")]).added
    add_after_removals = time.perf_counter() - start
    saves = []
    state = library._state
    for _ in range(repeats):
        start = time.perf_counter()
        save_state(state, folder / "save-probe.pth")
        saves.append(time.perf_counter() - start)
    journal = library.stats()["journal_size"]
    return {
        "rows": rows, "dim": dim, "file_bytes": size, "bytes_per_image": round(size / rows, 1),
        "torch_load_s": round(raw_load, 4), "load_and_validate_s": round(state_load, 4),
        "open_library_s": round(open_time, 4), "hash_index_s": round(index_time, 4),
        "add_one_median_s": round(statistics.median(adds), 4), "add_one_all_s": [round(a, 4) for a in adds],
        "remove_one_median_s": round(statistics.median(removes), 4),
        "remove_one_all_s": [round(r, 4) for r in removes], "add_after_removals_s": round(add_after_removals, 4),
        "journal_bytes_after": journal,
        "full_rewrite_median_s": round(statistics.median(saves), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp folder)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for rows in args.sizes:
            print(json.dumps(measure(rows, args.dim, args.repeats, Path(tmp))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
