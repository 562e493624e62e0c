"""ImageNet-1k validation readers: three on-disk layouts, detected automatically, labelled by sorted-WNID index.

1. official: ILSVRC2012_val_XXXXXXXX.JPEG files + the devkit (ILSVRC2012_validation_ground_truth.txt holds
   ILSVRC2012 IDs, which meta.mat maps to WNIDs);
2. torchvision: val/<wnid>/*.JPEG (or <wnid>/*.JPEG directly under the root);
3. kaggle: LOC_val_solution.csv + LOC_synset_mapping.txt + ILSVRC/Data/CLS-LOC/val/.

Labels are always positions in the full sorted list of the 1000 WNIDs (clip_app.prompts.imagenet_wnids), also
for a partial data set. Each reader also returns the WordNet `words` string of every class (the `raw` prompts).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

from ...images import IMAGE_EXTENSIONS
from ...prompts import imagenet_ilsvrc_ids, imagenet_short_names, imagenet_wnids

log = logging.getLogger(__name__)

GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
META_MAT = "meta.mat"
KAGGLE_SOLUTION = "LOC_val_solution.csv"
KAGGLE_SYNSETS = "LOC_synset_mapping.txt"
KAGGLE_VAL_DIR = Path("ILSVRC", "Data", "CLS-LOC", "val")
TORCHVISION_META = "meta.bin"
LAYOUTS = ("official", "torchvision", "kaggle")
WNID_RE = re.compile(r"^n\d{8}$")
OFFICIAL_RE = re.compile(r"^ILSVRC2012_val_(\d{8})\.jpe?g$", re.IGNORECASE)

LAYOUT_HELP = (
    "expected one of three ImageNet validation layouts:\n"
    f"  1. official: ILSVRC2012_val_XXXXXXXX.JPEG files plus the devkit files {GROUND_TRUTH} and {META_MAT}"
    " (the devkit may sit in a subfolder such as ILSVRC2012_devkit_t12/data/, or pass --devkit DIR)\n"
    "  2. torchvision: val/<wnid>/*.JPEG (for example val/n01440764/ILSVRC2012_val_00000293.JPEG)\n"
    f"  3. kaggle: {KAGGLE_SOLUTION}, {KAGGLE_SYNSETS} and {KAGGLE_VAL_DIR.as_posix()}/")


class DatasetError(ValueError):
    """The ImageNet folder cannot be used; the message says which layout was seen and what is missing."""


@dataclass(frozen=True)
class ImagenetSet:
    """Image files with their class index (sorted-WNID order) and the WordNet words of all 1000 classes."""

    layout: str
    root: Path
    files: tuple[Path, ...]
    labels: tuple[int, ...]
    raw_names: tuple[str, ...]
    raw_names_source: str

    def __len__(self) -> int:
        return len(self.files)

    @property
    def classes_present(self) -> tuple[int, ...]:
        """The class indices that have at least one image, ascending."""
        return tuple(sorted(set(self.labels)))

    def subset(self, indices: Sequence[int]) -> "ImagenetSet":
        """The same set restricted to these positions (kept in the given order)."""
        return replace(self, files=tuple(self.files[i] for i in indices), labels=tuple(self.labels[i] for i in indices))


def class_index() -> dict[str, int]:
    """WNID -> class index (position in the sorted list of the 1000 WNIDs)."""
    return {wnid: i for i, wnid in enumerate(imagenet_wnids())}


def read_imagenet(root: str | os.PathLike[str], devkit: str | os.PathLike[str] | None = None) -> ImagenetSet:
    """Detect the layout under `root` and read it; DatasetError says what is missing."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"ImageNet folder not found: {root} (pass --root DIR)\n{LAYOUT_HELP}")
    layout = detect_layout(root)
    log.info("ImageNet layout under %s: %s", root, layout)
    if layout == "kaggle":
        return read_kaggle(root)
    if layout == "torchvision":
        return read_torchvision(root)
    return read_official(root, devkit)


def detect_layout(root: Path) -> str:
    """'official', 'torchvision' or 'kaggle', judged from the files under root; DatasetError if none fits."""
    if (root / KAGGLE_SOLUTION).exists() or (root / "ILSVRC").is_dir():
        return "kaggle"
    if _wnid_folder(root) is not None:
        return "torchvision"  # a LOC_synset_mapping.txt beside class folders only supplies the words
    if _official_folder(root) is not None:
        return "official"
    if (root / KAGGLE_SYNSETS).exists():
        return "kaggle"
    seen = sorted(p.name + ("/" if p.is_dir() else "") for p in _head(root.iterdir(), 12))
    raise DatasetError(f"no ImageNet validation data recognised in {root} (found: {', '.join(seen) or 'nothing'})"
                       f"\n{LAYOUT_HELP}")


# ---- official release + devkit -----------------------------------------------------------------------------
def read_official(root: Path, devkit: str | os.PathLike[str] | None = None) -> ImagenetSet:
    """The official ILSVRC2012_val_*.JPEG files, labelled through the devkit's ground truth and meta.mat."""
    folder = _official_folder(root)
    places = _devkit_places(root, devkit)
    truth_path = find_file(GROUND_TRUTH, places)
    meta_path = find_file(META_MAT, [(truth_path.parent, 0)] + places if truth_path else places)
    missing = [name for name, path in ((GROUND_TRUTH, truth_path), (META_MAT, meta_path)) if path is None]
    if folder is None:
        missing.insert(0, "the images ILSVRC2012_val_XXXXXXXX.JPEG")
    if missing:
        where = ", ".join(str(base) for base, _ in places)
        raise DatasetError(f"official ImageNet layout in {root} is incomplete: missing {' and '.join(missing)} "
                           f"(searched {where}; pass --devkit DIR to point at the devkit's data folder)\n{LAYOUT_HELP}")
    assert folder is not None and truth_path is not None and meta_path is not None
    synsets = read_meta_mat(meta_path)
    _compare_with_official_ids(synsets, meta_path)
    truth = read_ground_truth(truth_path)
    index = class_index()
    files, labels = [], []
    for path in sorted(p for p in folder.iterdir() if OFFICIAL_RE.match(p.name)):
        number = int(OFFICIAL_RE.match(path.name).group(1))  # type: ignore[union-attr]
        if not 1 <= number <= len(truth):
            raise DatasetError(f"{path.name}: image number {number} is not in {truth_path} ({len(truth)} lines)")
        ilsvrc_id = truth[number - 1]
        if ilsvrc_id not in synsets:
            raise DatasetError(f"{path.name}: ILSVRC2012 ID {ilsvrc_id} from {truth_path.name} is not a class in "
                               f"{meta_path}")
        files.append(path)
        labels.append(index[synsets[ilsvrc_id][0]])
    words = {wnid: text for wnid, text in synsets.values()}
    raw, source = raw_names_from(words, f"{META_MAT} words ({meta_path})")
    return ImagenetSet("official", root, tuple(files), tuple(labels), raw, source)


def read_meta_mat(path: Path) -> dict[int, tuple[str, str]]:
    """The devkit's meta.mat: ILSVRC2012 ID -> (WNID, WordNet words) for the 1000 leaf classes."""
    from scipy.io import loadmat

    try:
        synsets = loadmat(str(path), squeeze_me=True)["synsets"]
        ids, wnids, words = synsets["ILSVRC2012_ID"], synsets["WNID"], synsets["words"]
        children = synsets["num_children"] if "num_children" in synsets.dtype.names else None
    except KeyError as exc:
        raise DatasetError(f"{path}: not an ImageNet devkit meta.mat (no synsets struct with field {exc})") from None
    except Exception as exc:  # scipy raises several types for damaged files
        raise DatasetError(f"{path}: cannot read meta.mat ({type(exc).__name__}: {exc})") from None
    known = class_index()
    table: dict[int, tuple[str, str]] = {}
    for k in range(synsets.size):
        wnid = str(_item(wnids, k)).strip()
        if wnid not in known or (children is not None and int(_item(children, k)) != 0):
            continue  # inner WordNet nodes (IDs above 1000) are not classes
        table[int(_item(ids, k))] = (wnid, str(_item(words, k)).strip())
    if not table:
        raise DatasetError(f"{path}: meta.mat lists none of the 1000 ImageNet-1k classes")
    return table


def read_ground_truth(path: Path) -> list[int]:
    """The devkit's validation ground truth: the ILSVRC2012 ID of image k on line k."""
    try:
        return [int(line) for line in path.read_text().split()]
    except ValueError as exc:
        raise DatasetError(f"{path}: expected one ILSVRC2012 ID (an integer) per line ({exc})") from None


def _compare_with_official_ids(synsets: dict[int, tuple[str, str]], meta_path: Path) -> None:
    official = imagenet_ilsvrc_ids()
    differ = [i for i, (wnid, _) in synsets.items() if official.get(i) != wnid]
    if differ:
        log.warning("%s maps %d ILSVRC2012 IDs differently from the official table (e.g. ID %d -> %s); using %s",
                    meta_path, len(differ), differ[0], synsets[differ[0]][0], meta_path.name)


def _official_folder(root: Path) -> Path | None:
    for folder in (root, root / "val", root / "ILSVRC2012_img_val"):
        if folder.is_dir() and any(OFFICIAL_RE.match(p.name) for p in folder.iterdir()):
            return folder
    return None


def _devkit_places(root: Path, devkit: str | os.PathLike[str] | None) -> list[tuple[Path, int]]:
    places: list[tuple[Path, int]] = []
    if devkit:
        devkit_path = Path(devkit).expanduser()
        if not devkit_path.is_dir():
            raise DatasetError(f"devkit folder not found: {devkit_path}")
        places.append((devkit_path, 3))
    places.append((root, 3))
    parent = root.resolve().parent
    if parent != root.resolve():
        places.append((parent, 0))
        places += [(p, 2) for p in sorted(parent.iterdir()) if p.is_dir() and "devkit" in p.name.lower()]
    return places


def find_file(name: str, places: Iterable[tuple[Path, int]]) -> Path | None:
    """The first file called `name`, searching each (folder, depth) breadth-first; image-class folders skipped."""
    for base, depth in places:
        queue: deque[tuple[Path, int]] = deque([(base, 0)])
        while queue:
            folder, level = queue.popleft()
            candidate = folder / name
            if candidate.is_file():
                return candidate
            if level < depth:
                try:
                    entries = sorted(os.scandir(folder), key=lambda e: e.name)
                except OSError:
                    continue
                queue.extend((Path(e.path), level + 1) for e in entries
                             if e.is_dir() and not WNID_RE.match(e.name) and not e.name.startswith("."))
    return None


# ---- torchvision ImageFolder ----------------------------------------------------------------------------------
def read_torchvision(root: Path) -> ImagenetSet:
    """val/<wnid>/*.JPEG: the label is the folder's WNID, numbered in the full sorted-WNID order."""
    folder = _wnid_folder(root)
    if folder is None:
        raise DatasetError(f"no <wnid>/ class folders under {root} or {root / 'val'}\n{LAYOUT_HELP}")
    index = class_index()
    files, labels = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and WNID_RE.match(p.name)):
        if sub.name not in index:
            raise DatasetError(f"{sub}: {sub.name} is not one of the 1000 ImageNet-1k classes")
        for path in sorted(sub.iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(path)
                labels.append(index[sub.name])
    if not files:
        raise DatasetError(f"the class folders under {folder} hold no images")
    words, source = _words_beside(root, folder)
    raw, source = raw_names_from(words, source)
    return ImagenetSet("torchvision", root, tuple(files), tuple(labels), raw, source)


def _wnid_folder(root: Path) -> Path | None:
    for folder in (root / "val", root):
        if folder.is_dir() and any(WNID_RE.match(p.name) and p.is_dir() for p in folder.iterdir()):
            return folder
    return None


def _words_beside(root: Path, folder: Path) -> tuple[dict[str, str], str]:
    """WordNet words for the torchvision layout, which has none of its own: torchvision's meta.bin,
    a LOC_synset_mapping.txt or a devkit meta.mat found beside the folder; else none."""
    places = [(root, 0), (folder.parent, 0)] + [(p, 2) for p in (root, folder.parent)]
    meta_bin = find_file(TORCHVISION_META, places[:2])
    if meta_bin is not None:
        try:
            return read_torchvision_meta(meta_bin), f"torchvision {TORCHVISION_META} ({meta_bin})"
        except DatasetError as exc:
            log.warning("%s", exc)
    mapping = find_file(KAGGLE_SYNSETS, places)
    if mapping is not None:
        return read_synset_mapping(mapping), f"{KAGGLE_SYNSETS} ({mapping})"
    meta = find_file(META_MAT, places)
    if meta is not None:
        return {wnid: text for wnid, text in read_meta_mat(meta).values()}, f"{META_MAT} words ({meta})"
    return {}, (f"no WordNet words file found beside {folder} (looked for {TORCHVISION_META}, {KAGGLE_SYNSETS}, "
                f"{META_MAT})")


def read_torchvision_meta(path: Path) -> dict[str, str]:
    """torchvision's ImageNet meta.bin: WNID -> its WordNet words joined by ', '."""
    import torch

    try:
        wnid_to_classes = torch.load(path, weights_only=True)[0]
        return {str(w): ", ".join(names) if isinstance(names, (tuple, list)) else str(names)
                for w, names in wnid_to_classes.items()}
    except Exception as exc:
        raise DatasetError(f"{path}: cannot read torchvision's meta.bin ({type(exc).__name__}: {exc})") from None


# ---- Kaggle ---------------------------------------------------------------------------------------------------
def read_kaggle(root: Path) -> ImagenetSet:
    """The Kaggle challenge layout: labels from LOC_val_solution.csv, words from LOC_synset_mapping.txt."""
    solution, mapping, folder = root / KAGGLE_SOLUTION, root / KAGGLE_SYNSETS, root / KAGGLE_VAL_DIR
    missing = [str(p.relative_to(root)) + ("/" if p == folder else "") for p in (solution, mapping, folder)
               if not (p.is_dir() if p == folder else p.is_file())]
    if missing:
        raise DatasetError(f"Kaggle ImageNet layout in {root} is incomplete: missing {', '.join(missing)}\n"
                           f"{LAYOUT_HELP}")
    truth = read_kaggle_solution(solution)
    index = class_index()
    files, labels = [], []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS):
        wnid = truth.get(path.stem)
        if wnid is None:
            raise DatasetError(f"{path.name} has no row in {solution}")
        if wnid not in index:
            raise DatasetError(f"{solution}: {path.stem} is labelled {wnid}, not one of the 1000 ImageNet-1k classes")
        files.append(path)
        labels.append(index[wnid])
    if not files:
        raise DatasetError(f"no images in {folder}")
    raw, source = raw_names_from(read_synset_mapping(mapping), f"{KAGGLE_SYNSETS} ({mapping})")
    return ImagenetSet("kaggle", root, tuple(files), tuple(labels), raw, source)


def read_kaggle_solution(path: Path) -> dict[str, str]:
    """LOC_val_solution.csv: ImageId -> WNID (the first word of PredictionString; every box has the class)."""
    truth: dict[str, str] = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise DatasetError(f"{path}: expected the columns ImageId,PredictionString")
        for row in reader:
            words = (row["PredictionString"] or "").split()
            if not words:
                raise DatasetError(f"{path}: {row['ImageId']} has an empty PredictionString")
            truth[row["ImageId"]] = words[0]
    return truth


def read_synset_mapping(path: Path) -> dict[str, str]:
    """LOC_synset_mapping.txt ('n01440764 tench, Tinca tinca' per line): WNID -> WordNet words."""
    table: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        wnid, _, words = line.strip().partition(" ")
        if not WNID_RE.match(wnid):
            raise DatasetError(f"{path}, line {number}: expected '<wnid> <words>', got {line[:60]!r}")
        table[wnid] = words.strip()
    return table


# ---- shared ---------------------------------------------------------------------------------------------------
def raw_names_from(words: dict[str, str], source: str) -> tuple[tuple[str, ...], str]:
    """The 1000 raw class texts in class order: WordNet words where known, else the ILSVRC table's short name."""
    short = imagenet_short_names()
    names, filled = [], 0
    for wnid in imagenet_wnids():
        text = words.get(wnid, "").strip()
        if not text:
            text, filled = short[wnid], filled + 1
        names.append(text)
    if filled == len(names):
        source = f"short names of the ILSVRC2012 table: {source}"
    elif filled:
        source = f"{source}; {filled} classes missing there use the ILSVRC2012 table's short names"
    return tuple(names), source


def balanced_subset(labels: Sequence[int], limit: int) -> list[int]:
    """Positions of a class-balanced subset of `limit` items: round-robin over classes, each class in file order;
    deterministic, counts per class differ by at most one (unless a class runs out). Returned ascending."""
    if limit < 0:
        raise ValueError("limit must be positive")
    by_class: dict[int, deque[int]] = {}
    for position, label in enumerate(labels):
        by_class.setdefault(label, deque()).append(position)
    queues = [by_class[c] for c in sorted(by_class)]
    chosen: list[int] = []
    while len(chosen) < limit and queues:
        for queue in queues:
            if len(chosen) == limit:
                break
            chosen.append(queue.popleft())
        queues = [q for q in queues if q]
    return sorted(chosen)


def limit_set(dataset: ImagenetSet, limit: int | None) -> ImagenetSet:
    """A class-balanced subset of at most `limit` images (the whole set when limit is None or large enough)."""
    if limit is None or limit >= len(dataset):
        return dataset
    return dataset.subset(balanced_subset(dataset.labels, limit))


def _head(items: Iterable[Path], n: int) -> list[Path]:
    out: list[Path] = []
    for item in items:
        out.append(item)
        if len(out) >= n:
            break
    return out


def _item(array, k: int):  # noqa: ANN001, ANN202 - numpy object arrays from loadmat
    value = array.flat[k] if hasattr(array, "flat") else array
    return value.item() if hasattr(value, "item") and getattr(value, "size", 1) == 1 else value
