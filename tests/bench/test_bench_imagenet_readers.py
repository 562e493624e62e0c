"""ImageNet readers: the three real layouts give the same labels (sorted-WNID index), meta.mat is honoured,
missing pieces are named, --limit is class-balanced and deterministic, raw names come from the right file."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from clip_app.bench.imagenet.data import (
    DatasetError,
    balanced_subset,
    detect_layout,
    limit_set,
    read_imagenet,
    read_meta_mat,
)
from clip_app.prompts import imagenet_ilsvrc_ids, imagenet_short_names, imagenet_wnids
from tests.support.imagenet_helpers import (
    TEST_IDS,
    TEST_WORDS,
    Sample,
    colour_samples,
    make_kaggle,
    make_official,
    make_torchvision,
    write_jpeg,
    write_meta_mat,
)

MAKERS = {"official": make_official, "torchvision": make_torchvision, "kaggle": make_kaggle}


def _labels_by_name(dataset) -> dict[str, int]:
    return {Path(f).stem: label for f, label in zip(dataset.files, dataset.labels)}


def test_test_data_ids_are_not_in_sorted_order() -> None:
    by_id = [wnid for wnid, _ in sorted(TEST_IDS.items(), key=lambda item: item[1])]
    assert by_id != sorted(by_id)  # so a reader that numbers classes by ILSVRC2012 ID gets them wrong


@pytest.mark.parametrize("layout", sorted(MAKERS))
def test_each_layout_is_detected_and_labelled_by_sorted_wnid(tmp_path: Path, layout: str) -> None:
    samples = colour_samples()
    root = MAKERS[layout](tmp_path / layout, samples)
    assert detect_layout(root) == layout
    dataset = read_imagenet(root)
    assert dataset.layout == layout
    expected = {s.name: imagenet_wnids().index(s.wnid) for s in samples}
    assert _labels_by_name(dataset) == expected
    assert len(dataset.raw_names) == 1000
    assert all(Path(f).is_file() for f in dataset.files)


def test_all_three_layouts_agree(tmp_path: Path) -> None:
    samples = colour_samples()
    labels = [_labels_by_name(read_imagenet(make(tmp_path / name, samples))) for name, make in MAKERS.items()]
    assert labels[0] == labels[1] == labels[2]
    assert set(labels[0].values()) == {imagenet_wnids().index(w) for w in TEST_IDS}


def test_official_layout_uses_meta_mat_not_a_guess(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A devkit whose meta.mat numbers the classes differently: labels follow that meta.mat (with a warning)."""
    samples = colour_samples()
    wnids = sorted(TEST_IDS)
    permuted = dict(zip(wnids, [3, 1, 5, 2, 4]))  # another ILSVRC2012 ID per WNID than the official table
    assert permuted != TEST_IDS
    root = make_official(tmp_path / "official", samples, ids=permuted)
    with caplog.at_level(logging.WARNING):
        dataset = read_imagenet(root)
    assert _labels_by_name(dataset) == {s.name: imagenet_wnids().index(s.wnid) for s in samples}
    assert "differently from the official table" in caplog.text


def test_meta_mat_parsing_keeps_leaf_classes_only(tmp_path: Path) -> None:
    path = write_meta_mat(tmp_path / "meta.mat", TEST_IDS, TEST_WORDS)
    table = read_meta_mat(path)
    assert table == {i: (wnid, TEST_WORDS[wnid]) for wnid, i in TEST_IDS.items()}  # the inner node 1001 is gone
    assert all(imagenet_ilsvrc_ids()[i] == wnid for i, (wnid, _) in table.items())


def test_devkit_found_in_a_sibling_folder_or_by_flag(tmp_path: Path) -> None:
    samples = colour_samples()[:3]
    root = make_official(tmp_path / "imagenet" / "val", samples, devkit="devkit/data")
    moved = tmp_path / "imagenet" / "ILSVRC2012_devkit_t12"
    shutil.move(str(root / "devkit"), moved)  # the usual unpacking: devkit beside the image folder
    assert len(read_imagenet(root)) == 3
    elsewhere = tmp_path / "somewhere" / "kit"
    shutil.move(str(moved), elsewhere)
    with pytest.raises(DatasetError, match="ILSVRC2012_validation_ground_truth.txt"):
        read_imagenet(root)
    assert len(read_imagenet(root, devkit=elsewhere)) == 3


@pytest.mark.parametrize("missing", ["ILSVRC2012_validation_ground_truth.txt", "meta.mat"])
def test_official_layout_names_the_missing_devkit_file(tmp_path: Path, missing: str) -> None:
    root = make_official(tmp_path / "o", colour_samples()[:2])
    (root / "ILSVRC2012_devkit_t12" / "data" / missing).unlink()
    with pytest.raises(DatasetError, match=missing) as info:
        read_imagenet(root)
    assert "incomplete" in str(info.value)


def test_official_ground_truth_too_short_is_an_error(tmp_path: Path) -> None:
    root = make_official(tmp_path / "o", colour_samples()[:2])
    write_jpeg(root / "ILSVRC2012_val_00000099.JPEG", (1, 2, 3))
    with pytest.raises(DatasetError, match="image number 99"):
        read_imagenet(root)


@pytest.mark.parametrize("missing", ["LOC_val_solution.csv", "LOC_synset_mapping.txt", "ILSVRC"])
def test_kaggle_layout_names_what_is_missing(tmp_path: Path, missing: str) -> None:
    root = make_kaggle(tmp_path / "k", colour_samples()[:2])
    target = root / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DatasetError, match="Kaggle ImageNet layout .* incomplete") as info:
        read_imagenet(root)
    assert missing in str(info.value)


def test_kaggle_image_without_a_solution_row_is_named(tmp_path: Path) -> None:
    root = make_kaggle(tmp_path / "k", colour_samples()[:2])
    write_jpeg(root / "ILSVRC" / "Data" / "CLS-LOC" / "val" / "ILSVRC2012_val_00000077.JPEG", (1, 2, 3))
    with pytest.raises(DatasetError, match="ILSVRC2012_val_00000077.JPEG has no row"):
        read_imagenet(root)


def test_unknown_layout_lists_the_three_layouts(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    write_jpeg(tmp_path / "photos" / "cat.jpg", (1, 2, 3))
    with pytest.raises(DatasetError) as info:
        read_imagenet(tmp_path)
    text = str(info.value)
    assert "photos/" in text and "official" in text and "torchvision" in text and "kaggle" in text
    with pytest.raises(DatasetError, match="not found"):
        read_imagenet(tmp_path / "nope")


def test_torchvision_folder_of_an_unknown_wnid_is_an_error(tmp_path: Path) -> None:
    root = make_torchvision(tmp_path / "t", colour_samples()[:2])
    write_jpeg(root / "val" / "n99999999" / "x.JPEG", (1, 2, 3))
    with pytest.raises(DatasetError, match="n99999999 is not one of the 1000"):
        read_imagenet(root)


def test_partial_set_keeps_the_full_class_index(tmp_path: Path) -> None:
    """One class folder only: its label is still its position among all 1000 WNIDs, not 0."""
    wnid = "n02119789"
    root = make_torchvision(tmp_path / "t", [Sample(1, wnid, (9, 9, 9))])
    dataset = read_imagenet(root / "val")  # the val folder itself as --root works too
    assert dataset.labels == (imagenet_wnids().index(wnid),) and dataset.labels[0] > 0


def test_raw_names_sources(tmp_path: Path) -> None:
    samples = colour_samples()
    wnid = samples[0].wnid
    k = imagenet_wnids().index(wnid)
    official = read_imagenet(make_official(tmp_path / "o", samples))
    kaggle = read_imagenet(make_kaggle(tmp_path / "k", samples))
    assert official.raw_names[k] == kaggle.raw_names[k] == TEST_WORDS[wnid]
    assert "meta.mat" in official.raw_names_source and "LOC_synset_mapping.txt" in kaggle.raw_names_source
    other = imagenet_wnids().index("n01440764")  # not in the made-up files: the table's short name
    assert official.raw_names[other] == imagenet_short_names()["n01440764"] == "tench"

    plain = read_imagenet(make_torchvision(tmp_path / "t", samples))
    assert plain.raw_names[k] == imagenet_short_names()[wnid]
    assert plain.raw_names_source.startswith("short names of the ILSVRC2012 table")

    beside = make_torchvision(tmp_path / "t2", samples)
    (beside / "LOC_synset_mapping.txt").write_text(f"{wnid} {TEST_WORDS[wnid]}\n")
    assert read_imagenet(beside).raw_names[k] == TEST_WORDS[wnid]

    with_meta_bin = make_torchvision(tmp_path / "t3", samples)
    torch.save(({wnid: ("kit fox", "Vulpes macrotis")}, []), with_meta_bin / "meta.bin")
    dataset = read_imagenet(with_meta_bin)
    assert dataset.raw_names[k] == "kit fox, Vulpes macrotis" and "meta.bin" in dataset.raw_names_source


def test_balanced_subset_is_balanced_and_deterministic() -> None:
    labels = [0] * 10 + [5] * 3 + [7] * 8
    chosen = balanced_subset(labels, 9)
    assert chosen == balanced_subset(labels, 9) == sorted(chosen)
    counts = {c: sum(labels[i] == c for i in chosen) for c in (0, 5, 7)}
    assert counts == {0: 3, 5: 3, 7: 3}
    big = balanced_subset(labels, 15)  # class 5 runs out: the others share the rest evenly
    assert {c: sum(labels[i] == c for i in big) for c in (0, 5, 7)} == {0: 6, 5: 3, 7: 6}
    assert balanced_subset(labels, 100) == list(range(len(labels)))
    assert balanced_subset(labels, 2) == [0, 10]  # first image of the first classes, file order within a class


def test_limit_set_subsets_files_and_labels_together(tmp_path: Path) -> None:
    dataset = read_imagenet(make_official(tmp_path / "o", colour_samples()))
    small = limit_set(dataset, 5)
    assert len(small) == 5 and len(small.classes_present) == 5
    assert all(dataset.labels[dataset.files.index(f)] == label for f, label in zip(small.files, small.labels))
    assert limit_set(dataset, None) is dataset and limit_set(dataset, 1000) is dataset
