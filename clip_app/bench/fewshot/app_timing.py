"""The app's few-shot path timed: add one example to a label set, then classify a library image with the adapted
head, with 16 examples x 20 labels (the issue's target: <= 50 ms). A 512-d CLIP with tiny towers stands in for
the model: the timed path never runs the model (the photo is a library image, the label prompts are cached after
the first call), only the label-set file, the library lookups and the head's fit."""

from __future__ import annotations

import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...encoders import ClipEncoder
from ...library import FeatureLibrary
from ...service import App

N_LABELS = 20
PER_LABEL = 16
REPEATS = 15
EMBED_DIM = 512


def tiny_512_checkpoint(path: Path) -> Path:
    """A CLIP with 512-d features (ViT-B/32's width) and tiny towers, saved where clip.load can read it."""
    import clip.model

    torch.manual_seed(0)
    net = clip.model.CLIP(embed_dim=EMBED_DIM, image_resolution=32, vision_layers=1, vision_width=64,
                          vision_patch_size=16, context_length=77, vocab_size=49408, transformer_width=64,
                          transformer_heads=1, transformer_layers=1)
    torch.save(net.state_dict(), path)
    return path


def _noise_png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def measure(methods: tuple[str, ...] = ("tip", "prototype", "linear"), repeats: int = REPEATS,
            workdir: Path | None = None) -> dict[str, dict[str, float]]:
    """{method: {"add_ms", "classify_ms", "total_ms", "cpu_ms" (medians; cpu: this process's CPU seconds, all
    threads), "total_p90_ms"}} over `repeats` rounds of: add the 320th example, classify a library image with
    a freshly fitted adapted head (then the example is taken out again)."""
    with tempfile.TemporaryDirectory(dir=workdir) as folder:
        root = Path(folder)
        encoder = ClipEncoder(str(tiny_512_checkpoint(root / "tiny-512.pt")), device="cpu", batch_size=64)
        app = App(encoder, FeatureLibrary(root / "gallery", root / "features_library.pth", encoder))
        report = app.library.add([(_noise_png(i), f"{i}.png") for i in range(N_LABELS * PER_LABEL + 1)])
        ids = [r.id for r in report.results]
        labels = [f"label {i}" for i in range(N_LABELS)]
        app.save_label_set("timing", labels)
        for c, label in enumerate(labels):
            chosen = ids[c * PER_LABEL:(c + 1) * PER_LABEL]
            app.add_examples("timing", label, chosen if c else chosen[:-1])  # the first label: one short
        last, query = ids[PER_LABEL - 1], ids[-1]
        out: dict[str, dict[str, float]] = {}
        for method in methods:
            app.classify_adapted(name="timing", image_id=query, method=method)  # warm: prompts encoded, code loaded
            adds, classifies, cpu = [], [], []
            for _ in range(repeats):
                app._heads.clear()  # as after any new example: the head is fitted again, never reused
                start, cpu_start = time.perf_counter(), time.process_time()
                app.add_examples("timing", labels[0], [last])
                middle = time.perf_counter()
                result = app.classify_adapted(name="timing", image_id=query, method=method)
                end, cpu_end = time.perf_counter(), time.process_time()
                assert result.n_examples == N_LABELS * PER_LABEL
                adds.append(middle - start)
                classifies.append(end - middle)
                cpu.append(cpu_end - cpu_start)
                app.remove_examples("timing", labels[0], [last])
            totals = sorted(a + c for a, c in zip(adds, classifies))
            out[method] = {"add_ms": 1000 * statistics.median(adds),
                           "classify_ms": 1000 * statistics.median(classifies),
                           "total_ms": 1000 * statistics.median(totals),
                           "total_p90_ms": 1000 * totals[min(len(totals) - 1, int(0.9 * len(totals)))],
                           "cpu_ms": 1000 * statistics.median(cpu)}
        return out
