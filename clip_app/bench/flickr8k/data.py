"""Flickr8k readers: the original release, the Kaggle layout and a captions.json, detected automatically.

Layouts (files are looked for in --root and in its direct sub-folders):
1. original: `Flickr8k.token.txt` (`<image>.jpg#<n><TAB><caption>`), `Flickr_8k.{train,dev,test}Images.txt` and
   the images folder (`Flicker8k_Dataset/`, `Flickr8k_Dataset/`, `Images/` or `images/`);
2. kaggle: `captions.txt` (CSV with the header `image,caption`) and `Images/`; the split comes from
   `Flickr_8k.<split>Images.txt` or Karpathy's `dataset_flickr8k.json` (its `split` fields);
3. json: `captions.json`, a list of `{"image": ..., "captions": [...]}` (optionally `"split": ...`) and `images/`.
   Without any `split` field every image belongs to the test split.
If the split files are missing in layout 1, Karpathy's json is used too. Malformed caption lines are skipped with a
warning; a missing piece is a DatasetError that says what was looked for.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
SPLIT_ALIASES = {"val": "dev", "valid": "dev", "validation": "dev", "restval": "train"}
TOKEN_FILE = "Flickr8k.token.txt"
KAGGLE_FILE = "captions.txt"
JSON_FILE = "captions.json"
KARPATHY_FILE = "dataset_flickr8k.json"
IMAGE_DIRS = {
    "original": ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images", "images"),
    "kaggle": ("Images", "images", "Flicker8k_Dataset", "Flickr8k_Dataset"),
    "json": ("images", "Images", "Flicker8k_Dataset", "Flickr8k_Dataset"),
}
_TOKEN_KEY = re.compile(r"^(?P<image>[^#/\\]+\.(?:jpe?g|png))#(?P<n>\d+)$", re.IGNORECASE)
_WARN_LINES = 5


class DatasetError(ValueError):
    """The Flickr8k folder is missing a file, a split or images; the message says what and where it looked."""


def split_file_name(split: str) -> str:
    """The original release's list of a split's images, e.g. Flickr_8k.testImages.txt."""
    return f"Flickr_8k.{split}Images.txt"


@dataclass(frozen=True)
class Flickr8k:
    """One split: its images (in split order) and their captions; caption_image[t] indexes images."""

    root: Path
    layout: str
    split: str
    split_source: str
    image_dir: Path
    images: tuple[str, ...]
    captions: tuple[str, ...]
    caption_image: tuple[int, ...]

    @property
    def image_paths(self) -> list[Path]:
        return [self.image_dir / name for name in self.images]

    @property
    def n_images(self) -> int:
        return len(self.images)

    @property
    def n_captions(self) -> int:
        return len(self.captions)

    def captions_of(self, image: int) -> list[int]:
        """Indices of the captions of image number `image`."""
        return [t for t, i in enumerate(self.caption_image) if i == image]


def normalize_split(split: str) -> str:
    """'test', 'dev' (alias 'val') or 'train'."""
    name = SPLIT_ALIASES.get(split.strip().lower(), split.strip().lower())
    if name not in SPLITS:
        raise DatasetError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    return name


def _split_alias(value: str) -> str:
    value = value.strip().lower()
    return SPLIT_ALIASES.get(value, value)


def _find(root: Path, name: str, want_dir: bool = False) -> Path | None:
    """`name` in root or one of its direct sub-folders (first in sorted order)."""
    candidates = [root / name] + [child / name for child in sorted(root.iterdir()) if child.is_dir()]
    for path in candidates:
        if (path.is_dir() if want_dir else path.is_file()):
            return path
    return None


def _image_dir(root: Path, layout: str) -> Path:
    for name in IMAGE_DIRS[layout]:
        found = _find(root, name, want_dir=True)
        if found is not None:
            return found
    raise DatasetError(f"found the {layout} Flickr8k captions in {root} but no images folder: looked for "
                       f"{', '.join(n + '/' for n in IMAGE_DIRS[layout])} in it and its sub-folders")


def _warn_malformed(source: Path, bad: list[tuple[int, str]]) -> None:
    for number, line in bad[:_WARN_LINES]:
        log.warning("%s line %d: malformed caption line skipped: %r", source.name, number, line[:120])
    if bad:
        log.warning("%s: skipped %d malformed line(s) in all", source.name, len(bad))


def read_token_file(path: Path) -> dict[str, list[str]]:
    """Flickr8k.token.txt -> {image name: captions in #n order}; malformed keys are skipped with a warning."""
    numbered: dict[str, list[tuple[int, str]]] = defaultdict(list)
    bad: list[tuple[int, str]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        key, _, caption = line.partition("\t")
        match = _TOKEN_KEY.match(key.strip())
        if match is None or not caption.strip():
            bad.append((number, line))
            continue
        numbered[match["image"]].append((int(match["n"]), caption.strip()))
    _warn_malformed(path, bad)
    return {image: [c for _, c in sorted(items, key=lambda x: x[0])] for image, items in numbered.items()}


def read_kaggle_captions(path: Path) -> dict[str, list[str]]:
    """Kaggle captions.txt (CSV `image,caption`) -> {image name: captions in file order}."""
    captions: dict[str, list[str]] = defaultdict(list)
    bad: list[tuple[int, str]] = []
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        for number, row in enumerate(csv.reader(handle), 1):
            if not row or not any(cell.strip() for cell in row):
                continue
            if number == 1 and [cell.strip().lower() for cell in row[:2]] == ["image", "caption"]:
                continue
            image, caption = row[0].strip(), ",".join(row[1:]).strip()
            if len(row) < 2 or not caption or not image or "#" in image:
                bad.append((number, ",".join(row)))
                continue
            captions[image].append(caption)
    _warn_malformed(path, bad)
    return dict(captions)


def read_captions_json(path: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """captions.json -> ({image: captions}, {image: split} for entries that carry a split)."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    if not isinstance(entries, list):
        raise DatasetError(f"{path} must hold a JSON list of {{\"image\": ..., \"captions\": [...]}} objects")
    captions: dict[str, list[str]] = {}
    splits: dict[str, str] = {}
    bad: list[tuple[int, str]] = []
    for number, entry in enumerate(entries, 1):
        texts = entry.get("captions") if isinstance(entry, dict) else None
        image = entry.get("image") if isinstance(entry, dict) else None
        if not isinstance(image, str) or not image.strip() or not isinstance(texts, list):
            bad.append((number, json.dumps(entry)[:120]))
            continue
        kept = [t.strip() for t in texts if isinstance(t, str) and t.strip()]
        if not kept:
            bad.append((number, json.dumps(entry)[:120]))
            continue
        captions.setdefault(image.strip(), []).extend(kept)
        if entry.get("split") is not None:
            splits[image.strip()] = str(entry["split"])
    _warn_malformed(path, bad)
    return captions, splits


def _read_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]


def _karpathy_split(path: Path, split: str) -> list[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data["images"]
        return [e["filename"] for e in entries if _split_alias(str(e.get("split", ""))) == split]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"cannot read the Karpathy split file {path}: {exc}") from exc


def find_split(root: Path, split: str) -> tuple[list[str], str]:
    """The images of a split from Flickr_8k.<split>Images.txt, else Karpathy's dataset_flickr8k.json."""
    listed = _find(root, split_file_name(split))
    if listed is not None:
        return _read_list(listed), str(listed)
    karpathy = _find(root, KARPATHY_FILE)
    if karpathy is not None:
        return _karpathy_split(karpathy, split), f"{karpathy} (split {split!r})"
    raise DatasetError(f"no list of the {split!r} split's images in {root}: looked for {split_file_name(split)} "
                       f"and {KARPATHY_FILE} (Karpathy's split) in it and its direct sub-folders")


def _json_split(captions: dict[str, list[str]], splits: dict[str, str], split: str,
                path: Path) -> tuple[list[str], str]:
    if not splits:
        if split != "test":
            raise DatasetError(f"{path} has no 'split' fields, so all its images are the test split; "
                               f"use --split test (or add \"split\" to its entries)")
        return list(captions), f"{path} (no split fields: every image is the test split)"
    chosen = []
    for image, value in splits.items():
        if _split_alias(value) == split:
            chosen.append(image)
        elif _split_alias(value) not in SPLITS:
            log.warning("%s: image %s has an unknown split %r; ignored", path.name, image, value)
    return chosen, f"{path} (split fields)"


def _assemble(root: Path, layout: str, split: str, split_source: str, image_dir: Path, names: Iterable[str],
              captions: dict[str, list[str]]) -> Flickr8k:
    images: list[str] = []
    texts: list[str] = []
    owner: list[int] = []
    without = []
    for name in dict.fromkeys(names):
        if not captions.get(name):
            without.append(name)
            continue
        owner.extend([len(images)] * len(captions[name]))
        texts.extend(captions[name])
        images.append(name)
    if without:
        log.warning("%d image(s) of the %s split have no captions and are left out (e.g. %s)", len(without), split,
                    ", ".join(without[:3]))
    if not images:
        raise DatasetError(f"the {split!r} split of {root} ({split_source}) has no images with captions")
    missing = [name for name in images if not (image_dir / name).is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} image file(s) of the {split!r} split are missing from {image_dir}: "
                           f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    log.info("Flickr8k (%s layout) %s split: %d images, %d captions", layout, split, len(images), len(texts))
    return Flickr8k(root=root, layout=layout, split=split, split_source=split_source, image_dir=image_dir,
                    images=tuple(images), captions=tuple(texts), caption_image=tuple(owner))


def load_flickr8k(root: str | Path, split: str = "test") -> Flickr8k:
    """Detect the layout of `root` and read one split (train, dev or test)."""
    root = Path(root).expanduser()
    split = normalize_split(split)
    if not root.is_dir():
        raise DatasetError(f"Flickr8k folder not found: {root}")
    token = _find(root, TOKEN_FILE)
    if token is not None:
        image_dir = _image_dir(root, "original")
        names, source = find_split(root, split)
        return _assemble(root, "original", split, source, image_dir, names, read_token_file(token))
    kaggle = _find(root, KAGGLE_FILE)
    if kaggle is not None:
        image_dir = _image_dir(root, "kaggle")
        names, source = find_split(root, split)
        return _assemble(root, "kaggle", split, source, image_dir, names, read_kaggle_captions(kaggle))
    listed = _find(root, JSON_FILE)
    if listed is not None:
        image_dir = _image_dir(root, "json")
        captions, splits = read_captions_json(listed)
        names, source = _json_split(captions, splits, split, listed)
        return _assemble(root, "json", split, source, image_dir, names, captions)
    raise DatasetError(
        f"no Flickr8k data set found in {root} (or its direct sub-folders); expected one of: "
        f"(1) the original release: {TOKEN_FILE} + {split_file_name(split)} + Flicker8k_Dataset/ (or Images/); "
        f"(2) the Kaggle layout: {KAGGLE_FILE} + Images/ + {split_file_name(split)} or {KARPATHY_FILE}; "
        f"(3) {JSON_FILE} (a list of {{\"image\", \"captions\"}}) + images/")
