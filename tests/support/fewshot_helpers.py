"""Made-up few-shot data for the tests: jittered solid colours per class, encoded by the colour model, and a
tiny image-folder dataset (train/<class>/, val/<class>/) on disk."""

from __future__ import annotations

from pathlib import Path

import torch

from clip_app.encoders import ClipEncoder
from tests.support.fakes import COLOURS, solid_image

#: class colour of each made-up class (names that mean nothing to the model: "type A", ...)
MEANINGLESS = {"type A": "red", "type B": "green", "type C": "blue", "type D": "yellow", "type E": "magenta"}


def jittered(colour: str, n: int, seed: int, spread: int = 40) -> list[tuple[int, int, int]]:
    """n RGB triples around a named colour (uniform jitter of +-spread per channel, clipped)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.tensor(COLOURS[colour])
    noise = torch.randint(-spread, spread + 1, (n, 3), generator=gen)
    return [tuple(int(v) for v in (base + row).clamp(0, 255)) for row in noise]


def colour_split(encoder: ClipEncoder, colours: list[str], per_class: int, seed: int,
                 spread: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [C*per_class, D], labels) of jittered images of each class colour, encoded by the model."""
    images, labels = [], []
    for label, colour in enumerate(colours):
        for rgb in jittered(colour, per_class, seed * 100 + label, spread):
            images.append(solid_image(rgb, (16, 16)))
            labels.append(label)
    return encoder.encode_images(images), torch.tensor(labels)


def write_image_folder(root: Path, classes: dict[str, str], n_train: int, n_val: int, val_name: str = "val",
                       spread: int = 40) -> Path:
    """root/train/<folder>/*.png and root/<val_name>/<folder>/*.png of jittered colours; classes: folder -> colour."""
    for split, count, seed in (("train", n_train, 1), (val_name, n_val, 2)):
        for index, (folder, colour) in enumerate(classes.items()):
            for i, rgb in enumerate(jittered(colour, count, seed * 1000 + index, spread)):
                path = root / split / folder / f"{i:03d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                solid_image(rgb, (16, 16)).save(path)
    return root
