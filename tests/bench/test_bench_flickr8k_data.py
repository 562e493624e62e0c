"""Flickr8k readers: the three layouts, splits, malformed lines and clear errors for missing pieces."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from clip_app.bench.flickr8k.data import DatasetError, load_flickr8k
from tests.support.flickr8k_helpers import KNOWN_CAPTIONS, KNOWN_IMAGES, LAYOUTS, known_flickr8k, write_flickr8k

EXPECTED_CAPTIONS = tuple(c for texts in KNOWN_CAPTIONS.values() for c in texts)
EXPECTED_OWNER = tuple(i for i, texts in enumerate(KNOWN_CAPTIONS.values()) for _ in texts)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_reads_the_same_test_split(tmp_path: Path, layout: str) -> None:
    data = load_flickr8k(known_flickr8k(tmp_path / layout, layout), "test")
    assert data.layout == layout
    assert data.images == tuple(KNOWN_IMAGES)
    assert data.captions == EXPECTED_CAPTIONS
    assert data.caption_image == EXPECTED_OWNER
    assert all(p.is_file() for p in data.image_paths)
    assert data.captions_of(0) == [0, 1]
    train = load_flickr8k(tmp_path / layout, "train")
    assert train.images == ("orange.jpg",) and train.captions == ("an orange fruit", "orange juice")


def test_original_malformed_lines_are_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = ["2258277193_586949ec62.jpg.1#0\tA dog with a key that is not a jpg name .",
           "no tab on this line", "red.jpg#x\tnumber is not a number", "green.jpg#7\t   ", "#3\tno image"]
    root = known_flickr8k(tmp_path / "d", "original", malformed=bad)
    with caplog.at_level(logging.WARNING):
        data = load_flickr8k(root)
    assert data.captions == EXPECTED_CAPTIONS
    text = caplog.text
    assert "malformed" in text and "2258277193_586949ec62.jpg.1#0" in text
    assert "skipped 5 malformed line(s)" in text


def test_kaggle_split_from_karpathy_json_and_commas_in_captions(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    captions = {**KNOWN_CAPTIONS, "red.jpg": ["a red ball, a bat, and a glove", "red"]}
    root = write_flickr8k(tmp_path / "k", "kaggle", KNOWN_IMAGES, captions,
                          {"train": [], "dev": ["black.jpg"], "test": list(KNOWN_IMAGES)[:5]}, split_style="karpathy",
                          malformed=["lonely.jpg"])
    with caplog.at_level(logging.WARNING):
        data = load_flickr8k(root, "test")
    assert "dataset_flickr8k.json" in data.split_source
    assert data.captions[0] == "a red ball, a bat, and a glove"
    assert data.n_images == 5 and data.n_captions == 10
    assert "lonely.jpg" in caplog.text
    assert load_flickr8k(root, "dev").images == ("black.jpg",)


def test_kaggle_without_a_split_file_says_what_it_looked_for(tmp_path: Path) -> None:
    root = write_flickr8k(tmp_path / "k", "kaggle", KNOWN_IMAGES, KNOWN_CAPTIONS, None)
    with pytest.raises(DatasetError, match=r"Flickr_8k\.testImages\.txt.*dataset_flickr8k\.json"):
        load_flickr8k(root, "test")
    with pytest.raises(DatasetError, match=r"Flickr_8k\.devImages\.txt"):
        load_flickr8k(root, "dev")


def test_original_files_in_sub_folders_are_found(tmp_path: Path) -> None:
    root = known_flickr8k(tmp_path / "d", "original")
    text = root / "Flickr8k_text"
    text.mkdir()
    for name in ("Flickr8k.token.txt", "Flickr_8k.testImages.txt", "Flickr_8k.trainImages.txt"):
        shutil.move(root / name, text / name)
    assert load_flickr8k(root).n_captions == len(EXPECTED_CAPTIONS)


def test_json_without_split_fields_is_all_test(tmp_path: Path) -> None:
    root = known_flickr8k(tmp_path / "j", "json", split_style="none")
    data = load_flickr8k(root, "test")
    assert data.images == (*KNOWN_IMAGES, "orange.jpg")
    assert "no split fields" in data.split_source
    with pytest.raises(DatasetError, match="use --split test"):
        load_flickr8k(root, "train")


def test_json_malformed_entries_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = known_flickr8k(tmp_path / "j", "json", split_style="none")
    entries = json.loads((root / "captions.json").read_text())
    entries += [{"image": "x.jpg"}, {"captions": ["no image"]}, "not an object", {"image": "y.jpg", "captions": []}]
    (root / "captions.json").write_text(json.dumps(entries))
    with caplog.at_level(logging.WARNING):
        assert load_flickr8k(root).n_images == 7
    assert "skipped 4 malformed line(s)" in caplog.text
    (root / "captions.json").write_text('{"image": "a.jpg"}')
    with pytest.raises(DatasetError, match="JSON list"):
        load_flickr8k(root)


def test_missing_pieces_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no Flickr8k data set found.*Flickr8k\.token\.txt.*captions\.txt.*"
                                           r"captions\.json"):
        load_flickr8k(tmp_path / "empty")
    with pytest.raises(DatasetError, match="not found"):
        load_flickr8k(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="unknown split"):
        load_flickr8k(tmp_path / "empty", "holdout")
    root = known_flickr8k(tmp_path / "d", "original")
    (root / "Flicker8k_Dataset" / "blue.jpg").unlink()
    with pytest.raises(DatasetError, match=r"1 image file\(s\) of the 'test' split are missing.*blue\.jpg"):
        load_flickr8k(root)
    shutil.rmtree(root / "Flicker8k_Dataset")
    with pytest.raises(DatasetError, match=r"no images folder.*Flicker8k_Dataset/"):
        load_flickr8k(root)


def test_split_images_without_captions_are_left_out_with_a_warning(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    root = known_flickr8k(tmp_path / "d", "original")
    (root / "Flickr_8k.testImages.txt").write_text("ghost.jpg\n" + "\n".join(KNOWN_IMAGES) + "\n")
    with caplog.at_level(logging.WARNING):
        assert load_flickr8k(root).images == tuple(KNOWN_IMAGES)
    assert "ghost.jpg" in caplog.text
    (root / "Flickr_8k.testImages.txt").write_text("ghost.jpg\n")
    with pytest.raises(DatasetError, match="no images with captions"):
        load_flickr8k(root)
