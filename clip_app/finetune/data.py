"""Training data: Flickr8k image-caption pairs, labelled class folders, deterministic augmentation, batch plans.

Everything random here is a pure function of (seed, epoch, index), so an interrupted run that resumes draws the
same batches and the same crops as one that never stopped.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..bench.flickr8k.data import DatasetError, Flickr8k, load_flickr8k
from ..bench.flickr8k.metrics import subset_captions
from ..images import IMAGE_EXTENSIONS, ImageError, open_image
from .errors import FinetuneError

log = logging.getLogger(__name__)

#: CLIP's pixel normalisation (clip.clip._transform)
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
#: random resized crop: the kept area (fraction of the image) and aspect ratio ranges
CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def item_rng(seed: int, epoch: int, index: int) -> random.Random:
    """A random source that depends only on (seed, epoch, index): the same crop after a resume."""
    digest = hashlib.sha256(f"{seed}/{epoch}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def augment(image: Image.Image, size: int, rng: random.Random) -> torch.Tensor:
    """Random resized crop (area 50-100 %, aspect 3/4-4/3) and horizontal flip, CLIP-normalised: -> [3, size, size]."""
    width, height = image.size
    box = (0, 0, width, height)
    for _ in range(10):
        area = width * height * rng.uniform(*CROP_SCALE)
        ratio = rng.uniform(*CROP_RATIO)
        w, h = int(round((area * ratio) ** 0.5)), int(round((area / ratio) ** 0.5))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            box = (left, top, left + w, top + h)
            break
    crop = image.crop(box).resize((size, size), Image.BICUBIC)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    pixels = torch.frombuffer(bytearray(crop.tobytes()), dtype=torch.uint8).view(size, size, 3)
    pixels = pixels.permute(2, 0, 1).float() / 255.0
    return (pixels - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


class ImageItems(Dataset):
    """(image path, target) items -> (pixels [3, S, S], target, index), or None when the image cannot be read."""

    def __init__(self, paths: Sequence[Path], targets: Sequence[int], preprocess: Callable[[Image.Image], torch.Tensor],
                 size: int, augment: bool = False, seed: int = 0) -> None:
        self.paths = list(paths)
        self.targets = list(targets)
        self.preprocess = preprocess
        self.size = size
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int] | None:
        try:
            image = open_image(self.paths[index], min_side=2 * self.size)  # reduced-scale JPEG decoding
        except ImageError as exc:
            log.warning("skipped an image that cannot be read: %s", exc)
            return None
        if self.augment:
            pixels = augment(image, self.size, item_rng(self.seed, self.epoch, index))
        else:
            pixels = self.preprocess(image)
        return pixels, self.targets[index], index


def collate(items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Stack the readable items: (pixels [B, 3, S, S], targets [B], item indices [B]); None if none is readable."""
    kept = [item for item in items if item is not None]
    if not kept:
        return None
    return (torch.stack([k[0] for k in kept]), torch.tensor([k[1] for k in kept]), torch.tensor([k[2] for k in kept]))


def epoch_batches(n_items: int, batch_size: int, seed: int, epoch: int, n_batches: int) -> list[list[int]]:
    """The first n_batches full batches of a shuffle of range(n_items) that depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_items, generator=generator).tolist()
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]


class _Probe(Dataset):
    def __init__(self, paths: Sequence[Path], min_side: int) -> None:
        self.paths, self.min_side = list(paths), min_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> str | None:
        try:
            open_image(self.paths[index], min_side=self.min_side)
            return None
        except ImageError as exc:
            return exc.reason


def unreadable_images(paths: Sequence[Path], workers: int = 0, min_side: int = 224,
                      progress: bool = False) -> dict[str, str]:
    """Decode every image once: {path: reason} of those that cannot be used (they are then left out)."""
    from tqdm import tqdm

    loader = DataLoader(_Probe(paths, min_side), batch_size=16, num_workers=workers, collate_fn=list)
    bad: dict[str, str] = {}
    done = 0
    with tqdm(total=len(paths), desc="checking images", unit="img", disable=not progress) as bar:
        for reasons in loader:
            for offset, reason in enumerate(reasons):
                if reason is not None:
                    bad[str(paths[done + offset])] = reason
            done += len(reasons)
            bar.update(len(reasons))
    for path, reason in list(bad.items())[:10]:
        log.warning("skipped %s: %s", path, reason)
    if bad:
        log.warning("%d image(s) cannot be read and are left out", len(bad))
    return bad


# ---- Flickr8k pairs -----------------------------------------------------------------------------------------
def read_split(root: str | Path, split: str) -> Flickr8k:
    """One split of a Flickr8k folder (any of the three layouts); FinetuneError when it is missing or empty."""
    try:
        return load_flickr8k(root, split)
    except DatasetError as exc:
        raise FinetuneError(f"{exc} (fine-tuning trains on the 'train' split and evaluates on --eval-split)") from None


def without_images(data: Flickr8k, bad: dict[str, str]) -> Flickr8k:
    """The split without the images listed in `bad` (and without their captions)."""
    keep = [i for i, path in enumerate(data.image_paths) if str(path) not in bad]
    if len(keep) == data.n_images:
        return data
    if not keep:
        raise FinetuneError(f"no image of the {data.split!r} split of {data.root} can be read")
    captions, owner = subset_captions(data.caption_image, keep)
    return Flickr8k(root=data.root, layout=data.layout, split=data.split, split_source=data.split_source,
                    image_dir=data.image_dir, images=tuple(data.images[i] for i in keep),
                    captions=tuple(data.captions[int(t)] for t in captions), caption_image=tuple(owner.tolist()))


def check_pairs(data: Flickr8k, batch_size: int, accumulate: int) -> None:
    """FinetuneError unless the split has at least one optimizer step's worth of pairs."""
    need = batch_size * accumulate
    if data.n_captions < need:
        raise FinetuneError(
            f"the {data.split!r} split has {data.n_captions} image-caption pairs ({data.n_images} images), fewer than "
            f"one batch needs ({need} = --batch-size {batch_size} x --accumulate {accumulate}); lower --batch-size")


# ---- labelled class folders ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassFolders:
    """One split of DIR/<split>/<class>/*: image paths, their class indices and the class names (folder order)."""

    root: Path
    split: str
    classes: tuple[str, ...]  # folder names, sorted
    paths: tuple[Path, ...]
    targets: tuple[int, ...]

    @property
    def labels(self) -> list[str]:
        """Readable class names for prompts: the folder name with '_' as spaces."""
        return [class_label(c) for c in self.classes]


def class_label(folder: str) -> str:
    """A class folder's name as a label: underscores become spaces ('sea_turtle' -> 'sea turtle')."""
    return " ".join(folder.replace("_", " ").split())


def read_class_folders(root: str | Path, split: str, classes: Sequence[str] | None = None) -> ClassFolders:
    """DIR/<split>/<class>/<images>; `classes` (the train split's) must all be present in another split."""
    folder = Path(root).expanduser() / split
    if not folder.is_dir():
        raise FinetuneError(f"the {split!r} split is missing: expected the folder {folder} with one sub-folder per "
                            "class (DIR/train/<class>/*, DIR/val/<class>/*)")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise FinetuneError(f"{folder} has no class folders (expected {folder}/<class>/<images>)")
    if classes is not None:
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        if extra:
            raise FinetuneError(f"{folder} has class folders the train split lacks: {', '.join(extra[:10])}")
        found = list(classes)
        if missing:
            log.warning("%s lacks class folders %s (no %s images of them)", folder, ", ".join(missing[:10]), split)
    paths: list[Path] = []
    targets: list[int] = []
    for index, name in enumerate(found):
        files = sorted(p for p in (folder / name).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS) \
            if (folder / name).is_dir() else []
        if not files and classes is None:
            raise FinetuneError(f"the class folder {folder / name} holds no images "
                                f"({', '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove the folder")
        paths.extend(files)
        targets.extend([index] * len(files))
    return ClassFolders(root=Path(root), split=split, classes=tuple(found), paths=tuple(paths), targets=tuple(targets))


def without_paths(data: ClassFolders, bad: dict[str, str]) -> ClassFolders:
    """The split without the unreadable images in `bad`; FinetuneError when a class is left with none (train)."""
    keep = [i for i, p in enumerate(data.paths) if str(p) not in bad]
    kept = ClassFolders(data.root, data.split, data.classes, tuple(data.paths[i] for i in keep),
                        tuple(data.targets[i] for i in keep))
    if data.split == "train":
        empty = sorted(set(range(len(data.classes))) - set(kept.targets))
        if empty:
            raise FinetuneError(f"no readable image left in the class folder(s) "
                                f"{', '.join(data.classes[i] for i in empty)} of {data.root / data.split}")
    if not kept.paths:
        raise FinetuneError(f"no readable image in {data.root / data.split}")
    return kept
