"""Measure the app: cold start, idle memory, and classify / search latency through gradio_client.

    python scripts/measure_app.py --make tiny --workdir /tmp/measure-tiny
    python scripts/measure_app.py --make vit-b32 --workdir /tmp/measure-b32 --images 100 --calls 20

--make writes a random-weight CLIP checkpoint (a state dict) into the work folder and uses it; --model uses an
existing checkpoint instead. The gallery is filled with --images random pictures before the app starts (so the start
does not include indexing). The app runs as `python app.py` in a child process; the numbers are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

LABELS = "cat, dog, car, bicycle, tree, house, person, boat, bird, flower"


def make_checkpoint(kind: str, path: Path) -> Path:
    """A random-weight CLIP saved as a state dict: 'tiny' (widths of 64) or 'vit-b32' (the ViT-B/32 shape)."""
    import clip
    import torch

    torch.manual_seed(0)
    if kind == "tiny":
        model = clip.model.CLIP(32, 32, 1, 64, 16, 77, 49408, 64, 1, 1)
    else:
        model = clip.model.CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12)
    torch.save(model.state_dict(), path)
    return path


def fill_gallery(model: Path, gallery: Path, library: Path, count: int) -> None:
    """Add `count` random pictures to a fresh library with the same model the app will load."""
    import io

    import numpy as np
    from PIL import Image

    from clip_app.encoders import ClipEncoder
    from clip_app.library import FeatureLibrary

    rng = np.random.default_rng(0)
    items = []
    for i in range(count):
        pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).resize((320, 240)).save(buffer, format="JPEG", quality=85)
        items.append((buffer.getvalue(), f"random-{i:04d}.jpg"))
    library_obj = FeatureLibrary(gallery, library, ClipEncoder(str(model), device="cpu"))
    print(f"gallery: {library_obj.add(items).summary()}", file=sys.stderr)


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 600) -> float:
    """Seconds until the server answers, or RuntimeError when the process dies first."""
    import httpx

    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with {process.returncode}")
        try:
            if httpx.get(url + "config", timeout=2).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the app did not answer in time")


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(calls: int, fn) -> list[float]:
    """Milliseconds of each call of fn(i)."""
    out = []
    for i in range(calls):
        start = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--make", choices=("tiny", "vit-b32"), help="write a random-weight checkpoint and use it")
    parser.add_argument("--model", help="an existing checkpoint file")
    parser.add_argument("--workdir", required=True, help="folder for the checkpoint, gallery and library")
    parser.add_argument("--images", type=int, default=100, help="random pictures in the gallery (default 100)")
    parser.add_argument("--calls", type=int, default=20, help="calls per endpoint (default 20)")
    parser.add_argument("--port", type=int, default=7911)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds to wait before reading memory")
    args = parser.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = Path(args.model) if args.model else make_checkpoint(args.make or "tiny", work / f"{args.make}.pt")
    gallery, library = work / "gallery", work / "features_library.pth"
    if args.images and not library.exists():
        fill_gallery(model, gallery, library, args.images)

    url = f"http://127.0.0.1:{args.port}/"
    command = [sys.executable, str(ROOT / "app.py"), "--model", str(model), "--device", "cpu", "--gallery",
               str(gallery), "--library", str(library), "--port", str(args.port)]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    try:
        cold = wait_ready(url, process)
        time.sleep(args.idle)
        idle_rss = rss_mb(process.pid)

        from gradio_client import Client, handle_file

        client = Client(url, verbose=False, analytics_enabled=False, download_files=str(work / "downloads"))
        photo = next(gallery.iterdir())
        first_classify = timed(1, lambda i: client.predict(handle_file(str(photo)), LABELS, "single",
                                                           api_name="/classify"))[0]
        classify = timed(args.calls, lambda i: client.predict(handle_file(str(photo)), LABELS, "single",
                                                              api_name="/classify"))
        search = timed(args.calls, lambda i: client.predict(f"a photo of thing number {i}", 10, api_name="/search"))
        busy_rss = rss_mb(process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    report = {
        "model": str(model), "images": args.images, "calls": args.calls, "cpu_count": os.cpu_count(),
        "cold_start_s": round(cold, 2), "since_spawn_s": round(time.perf_counter() - started, 1),
        "idle_rss_mib": round(idle_rss, 1), "rss_after_calls_mib": round(busy_rss, 1),
        "classify_first_ms": round(first_classify, 1),
        "classify_median_ms": round(statistics.median(classify), 1),
        "classify_p90_ms": round(sorted(classify)[int(0.9 * (len(classify) - 1))], 1),
        "search_median_ms": round(statistics.median(search), 1),
        "search_p90_ms": round(sorted(search)[int(0.9 * (len(search) - 1))], 1),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
