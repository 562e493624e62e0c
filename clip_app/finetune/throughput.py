"""Training throughput: `python -m clip_app.finetune.throughput [--batch-size 16] [--steps 5] [--device D]`.

Fine-tunes a randomly initialised ViT-B/32 (OpenAI CLIP's architecture) for a few optimizer steps through the real
`python -m clip_app.finetune retrieval` path (image decoding, augmentation off, forward, backward, AdamW) on made-up
Flickr8k-style JPEGs in a temporary folder, and prints the image-caption pairs trained per second as JSON.
The first step is counted too (no warm-up is excluded): run more --steps for a steadier figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from ..config import resolve_device
from .common import positive
from .outputs import save_clip_model

#: ViT-B/32: embed 512, 224 px, 12 visual layers of width 768, patch 32; text: 77 tokens, 49408 words, 512 wide,
#: 8 heads, 12 layers
VIT_B_32 = (512, 224, 12, 768, 32, 77, 49408, 512, 8, 12)


def make_data(root: Path, n_images: int, seed: int = 0) -> Path:
    """captions.json + images/ of n_images noisy 500 x 375 JPEGs (a Flickr8k photo's size), 5 captions each; the
    last 8 are the test split."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n_images):
        name = f"{i:05d}.jpg"
        noise = torch.randint(0, 256, (375, 500, 3), generator=torch.Generator().manual_seed(seed + i),
                              dtype=torch.uint8)
        Image.fromarray(noise.numpy()).save(root / "images" / name, quality=90)
        captions = [f"a photo number {i} of a {rng.choice(['dog', 'cat', 'car', 'boat'])} {j}" for j in range(5)]
        entries.append({"image": name, "captions": captions, "split": "test" if i >= n_images - 8 else "train"})
    (root / "captions.json").write_text(json.dumps(entries), encoding="utf-8")
    return root


def measure(batch_size: int, steps: int, device: str, workers: int, arch: tuple[int, ...] = VIT_B_32) -> dict:
    """Train a random model for `steps` optimizer steps; -> {"pairs_per_second", ...} (see the module doc)."""
    import clip

    from . import retrieval
    from .__main__ import build_parser

    with tempfile.TemporaryDirectory(prefix="clip-app-throughput-") as folder:
        root = Path(folder)
        pairs = batch_size * steps
        data = make_data(root / "data", n_images=-(-pairs // 5) + 8)
        torch.manual_seed(0)
        model = clip.model.CLIP(*arch)
        save_clip_model(root / "random.pt", model.state_dict())
        del model
        argv = ["retrieval", "--data", str(data), "--model", str(root / "random.pt"), "--out", str(root / "out"),
                "--batch-size", str(batch_size), "--max-steps", str(steps), "--epochs", "1", "--warmup", "0",
                "--workers", str(workers), "--eval-batch-size", "8", "--no-progress"]
        if device:
            argv += ["--device", device]
        load_before = os.getloadavg()
        started = time.perf_counter()
        outcome = retrieval.run(build_parser().parse_args(argv))
        timings = outcome.summary["timings"]
        return {"arch": list(arch), "device": resolve_device(device or "auto"), "batch_size": batch_size,
                "steps": timings["steps"], "pairs": timings["items_trained"], "train_seconds": timings["train"],
                "pairs_per_second": timings["items_per_second"], "torch_threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(), "load_average_before": list(load_before),
                "load_average_after": list(os.getloadavg()), "wall_seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(prog="python -m clip_app.finetune.throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=positive, default=16, help="pairs per step [16]")
    parser.add_argument("--steps", type=positive, default=5, help="optimizer steps [5]")
    parser.add_argument("--device", default="", help="auto, cpu or cuda [auto]")
    parser.add_argument("--workers", type=int, default=2, help="image decoding processes [2]")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.batch_size, args.steps, args.device, args.workers), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
