"""A made-up ImageNet validation set in the three real on-disk layouts (official + devkit, torchvision, Kaggle).

Five real WNIDs whose ILSVRC2012 IDs (the devkit numbering, 1..5 here as in the official table) are NOT their
sorted-WNID order. Images are small solid-colour JPEGs; with the colour model and the colour class names of
COLOUR_NAMES the expected accuracy is known exactly (see EXPECTED).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from scipy.io import savemat

from clip_app.prompts import imagenet_ilsvrc_ids, imagenet_wnids

#: WNID -> ILSVRC2012 ID (the official ones: kit fox is ID 1 but the last of these five in sorted order)
TEST_IDS: dict[str, int] = {wnid: i for i, wnid in imagenet_ilsvrc_ids().items() if i <= 5}
#: WNID -> WordNet words written into meta.mat / LOC_synset_mapping.txt (made up, recognisable in tests)
TEST_WORDS: dict[str, str] = {wnid: f"words of {wnid}, synonym {i}" for wnid, i in TEST_IDS.items()}
#: WNID -> the colour word the colour model understands (the class names injected for known-answer tests)
COLOUR_NAMES: dict[str, str] = dict(zip(sorted(TEST_IDS), ["yellow", "green", "orange", "blue", "red"]))

YELLOW_ORANGE = (247, 170, 8)  # nearest to orange, second nearest to yellow: a top-5 hit, a top-1 miss


@dataclass(frozen=True)
class Sample:
    number: int  # n of ILSVRC2012_val_<n:08d>.JPEG
    wnid: str
    rgb: tuple[int, int, int]

    @property
    def name(self) -> str:
        return f"ILSVRC2012_val_{self.number:08d}"

    @property
    def label(self) -> int:
        return imagenet_wnids().index(self.wnid)


def colour_samples() -> list[Sample]:
    """11 images over the 5 classes; the colour model gets 9 top-1 and 10 top-5 right (see EXPECTED)."""
    from tests.support.fakes import COLOURS

    by_name = {name: wnid for wnid, name in COLOUR_NAMES.items()}
    plan = [  # (class colour name, image colour)
        ("red", "red"), ("yellow", "yellow"), ("orange", "orange"), ("green", "green"), ("blue", "red"),
        ("orange", "orange"), ("red", "red"), ("yellow", YELLOW_ORANGE), ("blue", "blue"), ("green", "green"),
        ("orange", "orange"),
    ]
    return [Sample(number, by_name[cls], COLOURS[img] if isinstance(img, str) else img)
            for number, (cls, img) in enumerate(plan, start=1)]


#: the exact answer for colour_samples() with COLOUR_NAMES and the colour model
EXPECTED = {"top1": 9 / 11, "top5": 10 / 11, "mean_per_class": (1 + 1 + 1 + 0.5 + 0.5) / 5}


def write_jpeg(path: Path, rgb: Sequence[int], size: tuple[int, int] = (40, 30)) -> Path:
    """A solid-colour JPEG (quality 95)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, tuple(rgb)).save(path, "JPEG", quality=95)
    return path


def write_noise_jpeg(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> Path:
    """A random-noise JPEG (distinct features for a random-weight model)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "JPEG", quality=90)
    return path


def write_meta_mat(path: Path, ids: dict[str, int], words: dict[str, str]) -> Path:
    """A devkit meta.mat: a `synsets` struct array with the devkit's fields; leaf classes first, then one inner
    WordNet node (ID above 1000, with children) as in the real file."""
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    rows = [(ilsvrc_id, wnid, words[wnid], f"gloss of {wnid}", 0, np.zeros((1, 0)), 0, 1300)
            for wnid, ilsvrc_id in sorted(ids.items(), key=lambda item: item[1])]
    rows.append((1001, "n00001740", "entity", "that which is perceived", len(ids),
                 np.array(sorted(ids.values()), dtype=float).reshape(1, -1), 19, 0))
    synsets = np.zeros((len(rows), 1), dtype=[(f, object) for f in fields])
    for k, row in enumerate(rows):
        for field, value in zip(fields, row):
            synsets[k, 0][field] = np.array([[value]], dtype=float) if isinstance(value, int) else value
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"synsets": synsets})
    return path


def make_official(root: Path, samples: Sequence[Sample], ids: dict[str, int] | None = None,
                  devkit: str = "ILSVRC2012_devkit_t12/data", noise: bool = False) -> Path:
    """ILSVRC2012_val_*.JPEG in root + devkit ground truth (one ILSVRC2012 ID per image number) and meta.mat."""
    ids = ids or TEST_IDS
    for s in samples:
        _write(root / f"{s.name}.JPEG", s, noise)
    by_number = {s.number: s for s in samples}
    lines = [str(ids[by_number[n].wnid]) if n in by_number else "1" for n in range(1, max(by_number) + 1)]
    data = root / devkit
    data.mkdir(parents=True, exist_ok=True)
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(lines) + "\n")
    write_meta_mat(data / "meta.mat", ids, TEST_WORDS)
    return root


def make_torchvision(root: Path, samples: Sequence[Sample], noise: bool = False) -> Path:
    """root/val/<wnid>/ILSVRC2012_val_*.JPEG (torchvision's ImageNet folder; no words file)."""
    for s in samples:
        _write(root / "val" / s.wnid / f"{s.name}.JPEG", s, noise)
    return root


def make_kaggle(root: Path, samples: Sequence[Sample], noise: bool = False) -> Path:
    """The Kaggle challenge layout: LOC_val_solution.csv (with boxes), LOC_synset_mapping.txt, ILSVRC/... val."""
    rows = ["ImageId,PredictionString"]
    for s in samples:
        _write(root / "ILSVRC" / "Data" / "CLS-LOC" / "val" / f"{s.name}.JPEG", s, noise)
        rows.append(f"{s.name},{s.wnid} 1 2 30 20 {s.wnid} 4 5 38 28 ")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {TEST_WORDS[w]}\n" for w in sorted(TEST_WORDS)))
    return root


def _write(path: Path, sample: Sample, noise: bool) -> None:
    if noise:
        write_noise_jpeg(path, seed=sample.number)
    else:
        write_jpeg(path, sample.rgb)


def names_with(overrides: dict[str, str], default: str = "thing") -> list[str]:
    """1000 class names in class order: `default` everywhere except the WNIDs in overrides."""
    return [overrides.get(wnid, default) for wnid in imagenet_wnids()]
