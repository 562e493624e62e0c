"""Few-shot data sets: an image folder (DIR/train/<class>/*, DIR/val/<class>/* or DIR/test/<class>/*) or ImageNet
(shots from the training folders, evaluation on the validation set through the ImageNet readers)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ...images import IMAGE_EXTENSIONS
from ...prompts import imagenet_classnames
from ..imagenet.data import DatasetError, limit_set, read_imagenet

CLASSNAMES_FILE = "classnames.json"
VAL_NAMES = ("val", "test")

LAYOUT_HELP = ("expected an image-folder data set: DIR/train/<class>/* and DIR/val/<class>/* (or DIR/test/<class>/*),"
               f" class names from the folder names ('_' -> space) or DIR/{CLASSNAMES_FILE} "
               '({"folder": "class name"}); or ImageNet: --root VAL_DIR --imagenet-train TRAIN_DIR')


@dataclass(frozen=True)
class Split:
    """Image files [N] and their class indices [N]."""

    files: tuple[Path, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.files)


@dataclass(frozen=True)
class FewshotData:
    """A few-shot data set: class names (prompt text; ImageNet's are the model family's own, see
    prompts.family_prompts), the train split the shots come from, the val split."""

    name: str
    classnames: tuple[str, ...]
    train: Split
    val: Split
    source: str

    @property
    def n_classes(self) -> int:
        return len(self.classnames)


def read_image_folder(root: str | os.PathLike[str]) -> FewshotData:
    """DIR/train/<class>/ and DIR/val/<class>/ (or test/); classes are the train folders, sorted; DatasetError
    says what is missing."""
    root = Path(root).expanduser()
    train_dir = root / "train"
    val_dir = next((root / n for n in VAL_NAMES if (root / n).is_dir()), None)
    if not root.is_dir() or not train_dir.is_dir() or val_dir is None:
        missing = "the folder" if not root.is_dir() else " and ".join(
            f"{n}/" for n, ok in (("train", train_dir.is_dir()), ("val", val_dir is not None)) if not ok)
        raise DatasetError(f"{root}: missing {missing}\n{LAYOUT_HELP}")
    folders = sorted(p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetError(f"{train_dir} holds no class folders\n{LAYOUT_HELP}")
    unknown = sorted(p.name for p in val_dir.iterdir() if p.is_dir() and p.name not in folders
                     and not p.name.startswith("."))
    if unknown:
        raise DatasetError(f"{val_dir} has class folders that train/ lacks: {', '.join(unknown[:5])}")
    names = _classnames(root, folders)
    train, val = _split(train_dir, folders), _split(val_dir, folders)
    empty = [folders[c] for c in range(len(folders)) if c not in set(train.labels)]
    if empty:
        raise DatasetError(f"class folder(s) without images in {train_dir}: {', '.join(empty[:5])}")
    if not len(val):
        raise DatasetError(f"{val_dir} holds no images")
    return FewshotData(root.name, tuple(names), train, val, f"image folders in {root} ({val_dir.name}/ evaluated)")


def read_imagenet_pair(val_root: str | os.PathLike[str], train_root: str | os.PathLike[str],
                       devkit: str | os.PathLike[str] | None = None, limit: int | None = None) -> FewshotData:
    """ImageNet: shots from train_root's <wnid>/ folders, evaluation on the validation set under val_root (any
    layout the ImageNet benchmark reads; `limit`: a class-balanced subset of it); all 1000 classes."""
    val = limit_set(read_imagenet(val_root, devkit), limit)
    train = read_imagenet(train_root)
    return FewshotData("imagenet", tuple(imagenet_classnames()), Split(train.files, train.labels),
                       Split(val.files, val.labels),
                       f"ImageNet: shots from {train_root}, {len(val)} validation images ({val.layout} layout)")


def _classnames(root: Path, folders: list[str]) -> list[str]:
    path = root / CLASSNAMES_FILE
    if not path.exists():
        return [folder.replace("_", " ") for folder in folders]
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(mapping, dict) or not all(isinstance(v, str) and v.strip() for v in mapping.values()):
            raise ValueError('expected {"folder": "class name", ...}')
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path} cannot be read: {exc}") from None
    missing = [f for f in folders if f not in mapping]
    if missing:
        raise DatasetError(f"{path} has no name for the class folder(s) {', '.join(missing[:5])}")
    return [" ".join(mapping[f].split()) for f in folders]


def _split(folder: Path, classes: list[str]) -> Split:
    files, labels = [], []
    for index, name in enumerate(classes):
        sub = folder / name
        if not sub.is_dir():
            continue
        for path in sorted(sub.iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(path)
                labels.append(index)
    return Split(tuple(files), tuple(labels))
