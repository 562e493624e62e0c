"""Made-up Flickr8k data sets in the three layouts (solid-colour images, captions with colour words)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from tests.support.fakes import COLOUR_NAMES, COLOURS, solid_image

#: image -> its colour; every image has its own colour, so the colour model's answers are known
KNOWN_IMAGES = {"red.jpg": "red", "green.jpg": "green", "blue.jpg": "blue", "yellow.jpg": "yellow",
                "white.jpg": "white", "black.jpg": "black"}
#: red.jpg's FIRST caption names purple (no purple image; blue is the closest colour), its SECOND is the hit
KNOWN_CAPTIONS = {
    "red.jpg": ["a man in a purple hat", "a red ball on the grass"],
    "green.jpg": ["a green field", "green grass in a park"],
    "blue.jpg": ["a blue sky over the sea", "the water is blue"],
    "yellow.jpg": ["a yellow taxi", "a small yellow flower"],
    "white.jpg": ["white snow on a mountain", "a man in a white shirt"],
    "black.jpg": ["a black cat", "a black dog sleeps"],
}
#: an extra image that belongs to the train split only
TRAIN_ONLY = {"orange.jpg": ["an orange fruit", "orange juice"]}

LAYOUTS = ("original", "kaggle", "json")


def write_images(folder: Path, images: dict[str, str | tuple[int, int, int]], size: tuple[int, int] = (40, 32)) -> None:
    """Save one solid-colour JPEG per name."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, colour in images.items():
        solid_image(colour, size).save(folder / name, quality=95)


def write_split_files(root: Path, splits: dict[str, list[str]]) -> None:
    """Flickr_8k.<split>Images.txt per split."""
    for split, names in splits.items():
        (root / f"Flickr_8k.{split}Images.txt").write_text("\n".join(names) + "\n", encoding="utf-8")


def write_karpathy(root: Path, splits: dict[str, list[str]], captions: dict[str, list[str]]) -> None:
    """Karpathy's dataset_flickr8k.json (split 'val' for dev)."""
    names = {"train": "train", "dev": "val", "test": "test"}
    images = [{"filename": name, "split": names[split], "sentences": [{"raw": c} for c in captions.get(name, [])]}
              for split, members in splits.items() for name in members]
    (root / "dataset_flickr8k.json").write_text(json.dumps({"dataset": "flickr8k", "images": images}),
                                                encoding="utf-8")


def write_flickr8k(root: Path, layout: str, images: dict[str, str | tuple[int, int, int]],
                   captions: dict[str, list[str]], splits: dict[str, list[str]] | None,
                   split_style: str = "files", malformed: list[str] | None = None) -> Path:
    """Write a data set in one layout; split_style 'files', 'karpathy' or 'none' (json layout: 'fields' too)."""
    root.mkdir(parents=True, exist_ok=True)
    if layout == "original":
        write_images(root / "Flicker8k_Dataset", images)
        lines = [f"{name}#{n}\t{text}" for name, texts in captions.items() for n, text in enumerate(texts)]
        lines[1:1] = malformed or []
        (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif layout == "kaggle":
        write_images(root / "Images", images)
        with (root / "captions.txt").open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "caption"])
            for name, texts in captions.items():
                for text in texts:
                    writer.writerow([name, text])
            for line in malformed or []:
                handle.write(line + "\n")
    elif layout == "json":
        write_images(root / "images", images)
        split_of = {n: s for s, names in (splits or {}).items() for n in names}
        entries = [{"image": name, "captions": texts, **({"split": split_of[name]} if split_style == "fields"
                                                          and name in split_of else {})}
                   for name, texts in captions.items()]
        (root / "captions.json").write_text(json.dumps(entries), encoding="utf-8")
    else:
        raise ValueError(layout)
    if splits and split_style == "files":
        write_split_files(root, splits)
    elif splits and split_style == "karpathy":
        write_karpathy(root, splits, captions)
    return root


def known_flickr8k(root: Path, layout: str, **kwargs) -> Path:
    """The known-answer set: the six colour images are the test split, orange.jpg is train only."""
    images = {**KNOWN_IMAGES, "orange.jpg": "orange"}
    captions = {**KNOWN_CAPTIONS, **TRAIN_ONLY}
    splits = {"train": list(TRAIN_ONLY), "dev": [], "test": list(KNOWN_IMAGES)}
    style = kwargs.pop("split_style", "fields" if layout == "json" else "files")
    return write_flickr8k(root, layout, images, captions, splits, split_style=style, **kwargs)


_SUBJECTS = ("dog", "man", "woman", "child", "car", "ball", "bird", "house", "bike", "boat")
_PLACES = ("in the park", "on the beach", "near a lake", "in the snow", "on a busy street", "in a field")
_FILLER = ("while the sun is shining", "next to some people", "during a sunny summer afternoon",
           "as a crowd watches from far away")


def synthetic_flickr8k(root: Path, n_images: int = 300, captions_per_image: int = 5, seed: int = 0,
                       noise: float = 0.25) -> Path:
    """A larger made-up set (original layout, all test): shaded colours; captions name the colour, sometimes a
    wrong one or none, and have varied lengths. For demo plots with the colour model."""
    rng = random.Random(seed)
    images: dict[str, tuple[int, int, int]] = {}
    captions: dict[str, list[str]] = {}
    for i in range(n_images):
        colour = rng.choice(COLOUR_NAMES)
        shade = tuple(min(255, max(0, int(c + rng.gauss(0, 25)))) for c in COLOURS[colour])
        name = f"{1000 + i}_{colour}.jpg"
        images[name] = shade
        texts = []
        for _ in range(captions_per_image):
            said = colour if rng.random() > noise else rng.choice([*COLOUR_NAMES, ""])
            words = f"a {said} {rng.choice(_SUBJECTS)}".replace("  ", " ")
            if rng.random() < 0.6:
                words += f" {rng.choice(_PLACES)}"
            if rng.random() < 0.4:
                words += f" {rng.choice(_FILLER)}"
            texts.append(words + " .")
        captions[name] = texts
    return write_flickr8k(root, "original", images, captions, {"test": list(images)})
