"""Flickr8k with captions in Chinese: recall per text tower (CLIP's own, multilingual, routed) on the same images."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from clip_app.bench.__main__ import main
from clip_app.bench.flickr8k.data import DatasetError, load_flickr8k
from clip_app.bench.flickr8k.multilingual import read_caption_lines, read_captions_file, with_captions
from clip_app.encoders import ClipEncoder, load_text_model
from tests.support.fakes import TINY_DIM
from tests.support.flickr8k_helpers import KNOWN_IMAGES, write_flickr8k
from tests.support.multilingual_helpers import save_tiny_sentence_transformer

#: made-up captions, most in Chinese; one English caption per image for the routed row
CHINESE = {
    "red.jpg": ["一辆红色的车", "红色的花", "a red car"], "green.jpg": ["绿色的树", "一张绿色的照片", "green trees"],
    "blue.jpg": ["蓝色的海", "蓝色的车", "the blue sea"], "yellow.jpg": ["一只猫", "这是一只狗", "a cat"],
    "white.jpg": ["白色的花", "一张图片", "a white flower"], "black.jpg": ["一只狗", "海滩", "a dog"],
}


@pytest.fixture(scope="module")
def st_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sentence_transformer(tmp_path_factory.mktemp("text") / "tiny-multilingual", TINY_DIM)


def _recall_at_1(texts: torch.Tensor, images: torch.Tensor, owner: list[int]) -> tuple[float, float]:
    """Text->image and image->text R@1, by hand."""
    scores = texts @ images.T  # [T, I]
    t2i = sum(int(scores[t].argmax()) == owner[t] for t in range(len(owner))) / len(owner)
    i2t = sum(owner[int(scores[:, i].argmax())] == i for i in range(images.shape[0])) / images.shape[0]
    return t2i, i2t


def test_chinese_captions_beside_the_images_give_recall_per_tower(tmp_path: Path, tiny_checkpoint: Path,
                                                                   tiny_encoder: ClipEncoder, st_folder: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    root = write_flickr8k(tmp_path / "cn", "json", KNOWN_IMAGES, CHINESE, None, split_style="none")
    out = tmp_path / "out"
    assert main(["flickr8k", "--root", str(root), "--model", str(tiny_checkpoint), "--text-model", str(st_folder),
                 "--out", str(out), "--workers", "0", "--batch-size", "4", "--no-progress", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "multilingual" in printed and "routed" in printed
    [report] = out.glob("flickr8k-multilingual-*.json")
    result = json.loads(report.read_text(encoding="utf-8"))
    assert set(result["towers"]) == {"clip", "multilingual", "routed"} and result["n_captions"] == 18
    assert result["routed_to_multilingual"] == 12 and result["text_model"] == st_folder.name
    assert report.with_suffix(".md").read_text(encoding="utf-8").count("| ") >= 4
    data = load_flickr8k(root, "test")
    images = tiny_encoder.encode_images([Image.open(p).convert("RGB") for p in data.image_paths])
    tower = load_text_model(str(st_folder))
    features = {"clip": tiny_encoder.encode_texts(list(data.captions)),
                "multilingual": tower.encode_texts(list(data.captions))}
    features["routed"] = torch.stack([features["clip" if c.isascii() else "multilingual"][i]
                                      for i, c in enumerate(data.captions)])
    for name, texts in features.items():
        t2i, i2t = _recall_at_1(texts, images, list(data.caption_image))
        assert result["towers"][name]["text_to_image"]["R@1"] == pytest.approx(t2i, abs=1e-6), name
        assert result["towers"][name]["image_to_text"]["R@1"] == pytest.approx(i2t, abs=1e-6), name


def test_a_flickr8k_cn_captions_file_replaces_the_captions(tmp_path: Path, tiny_checkpoint: Path, st_folder: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    english = {name: [f"a {colour} thing"] for name, colour in KNOWN_IMAGES.items()}
    root = write_flickr8k(tmp_path / "en", "json", KNOWN_IMAGES, english, None, split_style="none")
    lines = tmp_path / "flickr8kzhc.caption.txt"
    lines.write_text("red#0 一辆红色的车\nred.jpg#1 红色的花\ngreen#zhc#0 绿色的树\nnot a caption line\n"
                     "blue.jpg#0\t蓝色的海\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        captions = read_caption_lines(lines)
    assert captions == {"red": ["一辆红色的车"], "red.jpg": ["红色的花"], "green": ["绿色的树"],
                        "blue.jpg": ["蓝色的海"]}
    assert "1 line(s)" in caplog.text
    data = with_captions(load_flickr8k(root, "test"), read_captions_file(lines), str(lines))
    assert data.images == ("red.jpg", "green.jpg", "blue.jpg")  # the others have no Chinese caption
    assert data.captions == ("一辆红色的车", "红色的花", "绿色的树", "蓝色的海") and data.caption_image == (0, 0, 1, 2)
    out = tmp_path / "out"
    assert main(["flickr8k", "--root", str(root), "--model", str(tiny_checkpoint), "--text-model", str(st_folder),
                 "--captions", str(lines), "--out", str(out), "--workers", "0", "--no-progress",
                 "--device", "cpu"]) == 0
    [report] = out.glob("flickr8k-multilingual-*.json")
    result = json.loads(report.read_text(encoding="utf-8"))
    assert result["n_images"] == 3 and result["captions"] == str(lines)


def test_bad_captions_input_is_a_clear_error(tmp_path: Path, tiny_checkpoint: Path, st_folder: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    root = write_flickr8k(tmp_path / "en", "json", KNOWN_IMAGES, {n: ["x"] for n in KNOWN_IMAGES}, None,
                          split_style="none")
    with pytest.raises(DatasetError, match="not found"):
        read_captions_file(tmp_path / "missing.txt")
    other = tmp_path / "other.txt"
    other.write_text("nobody#0 一只猫\n", encoding="utf-8")
    common = ["flickr8k", "--root", str(root), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "o"),
              "--workers", "0", "--no-progress", "--device", "cpu"]
    assert main([*common, "--text-model", str(st_folder), "--captions", str(other)]) == 2
    assert "has a caption in" in capsys.readouterr().err
    assert main([*common, "--captions", str(other)]) == 2
    assert "--captions needs --text-model" in capsys.readouterr().err
    assert main([*common, "--text-model", str(tmp_path / "nope")]) == 2
    assert "text model folder not found" in capsys.readouterr().err
