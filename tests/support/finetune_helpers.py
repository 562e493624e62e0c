"""Made-up data for the fine-tuning tests: learnable colour captions (Flickr8k json layout) and class folders."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from tests.support.fakes import COLOURS, solid_image
from tests.support.flickr8k_helpers import write_flickr8k

#: the colours of the made-up sets (a tiny random CLIP must learn to tell them apart from their names)
LEARN_COLOURS = ("red", "green", "blue", "yellow", "white", "black", "orange", "purple")


def _shade(colour: str, rng: random.Random, spread: int = 20) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + rng.randint(-spread, spread))) for c in COLOURS[colour])  # type: ignore


def colour_captions(root: Path, per_colour: int = 3, seed: int = 0) -> Path:
    """Train: `per_colour` shaded images per colour, two captions naming it; test: one image per colour."""
    rng = random.Random(seed)
    images: dict[str, tuple[int, int, int]] = {}
    captions: dict[str, list[str]] = {}
    splits: dict[str, list[str]] = {"train": [], "test": []}
    for colour in LEARN_COLOURS:
        for i in range(per_colour + 1):
            name = f"{colour}-{i}.jpg"
            images[name] = _shade(colour, rng)
            captions[name] = [f"a {colour} picture", f"something {colour}"]
            splits["test" if i == per_colour else "train"].append(name)
    return write_flickr8k(root, "json", images, captions, splits, split_style="fields")


def colour_folders(root: Path, train: int = 4, val: int = 2, seed: int = 0,
                   colours: tuple[str, ...] = LEARN_COLOURS[:4]) -> Path:
    """root/train/<colour>/*.png and root/val/<colour>/*.png: shaded solid-colour images."""
    rng = random.Random(seed)
    for split, count in (("train", train), ("val", val)):
        for colour in colours:
            folder = root / split / colour
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                solid_image(_shade(colour, rng, 40), (36, 36)).save(folder / f"{i}.png")
    return root


def retrieval_args(data: Path, model: Path | str, out: Path, **overrides: object) -> list[str]:
    """A `python -m clip_app.finetune retrieval` command line for the tests (small, fast, CPU)."""
    options = {"--epochs": 4, "--batch-size": 8, "--lr": 1e-3, "--warmup": 2, "--weight-decay": 0.0,
               "--workers": 0, "--device": "cpu", "--eval-batch-size": 16, **overrides}
    argv = ["retrieval", "--data", str(data), "--model", str(model), "--out", str(out), "--no-progress"]
    return _with_options(argv, options)


def classify_args(root: Path, model: Path | str, out: Path, **overrides: object) -> list[str]:
    """A `python -m clip_app.finetune classify` command line for the tests."""
    options = {"--epochs": 3, "--batch-size": 4, "--lr": 1e-4, "--head-lr": 1e-2, "--workers": 0,
               "--device": "cpu", "--eval-batch-size": 16, **overrides}
    argv = ["classify", "--root", str(root), "--model", str(model), "--out", str(out), "--no-progress"]
    return _with_options(argv, options)


def _with_options(argv: list[str], options: dict[str, object]) -> list[str]:
    """argv followed by each option: a flag alone for True, nothing for None or False, else flag and value."""
    for flag, value in options.items():
        if value is True:
            argv.append(flag)
        elif value is not None and value is not False:
            argv += [flag, str(value)]
    return argv


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse a command line with the real parser."""
    from clip_app.finetune.__main__ import build_parser

    return build_parser().parse_args(argv)
