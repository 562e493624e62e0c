"""Flickr8k benchmark: known answers with the colour model, the written analysis, the command line and its cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clip_app.bench.__main__ import main
from clip_app.bench.features import encode_image_files
from clip_app.bench.flickr8k.cli import Flickr8kOptions, caption_features, evaluate, image_features
from clip_app.bench.flickr8k.data import load_flickr8k
from clip_app.bench.flickr8k.metrics import image_to_text_ranks, text_to_image_ranks
from clip_app.bench.flickr8k.plots import image_to_text_rows, text_to_image_rows
from clip_app.bench.flickr8k.report import reference_for
from clip_app.bench.output import model_slug
from clip_app.bench.timing import StageTimer
from tests.support.fakes import color_encoder
from tests.support.flickr8k_helpers import KNOWN_CAPTIONS, LAYOUTS, known_flickr8k

ROOT = Path(__file__).resolve().parents[2]
# red.jpg's first caption names purple: blue is the closest image colour, red the next; every other caption's
# colour word names its own image. Image -> text: every image's own colour caption is first (red's is its SECOND).
EXPECTED_T2I = [2] + [1] * (sum(len(c) for c in KNOWN_CAPTIONS.values()) - 1)
EXPECTED_I2T = [1] * len(KNOWN_CAPTIONS)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_known_answers_in_each_layout(tmp_path: Path, layout: str, colour_encoder) -> None:
    data = load_flickr8k(known_flickr8k(tmp_path / layout, layout), "test")
    images = encode_image_files(colour_encoder, data.image_paths, batch_size=4, workers=0, progress=False)
    texts = colour_encoder.encode_texts(list(data.captions))
    owner = torch.tensor(data.caption_image)
    assert text_to_image_ranks(texts, images, owner).tolist() == EXPECTED_T2I
    assert image_to_text_ranks(images, texts, owner).tolist() == EXPECTED_I2T
    # the purple caption's top image is blue, and red's first caption alone would not be its top caption
    assert int((texts[0] @ images.T).argmax()) == data.images.index("blue.jpg")
    assert int((images[0] @ texts.T).argmax()) == 1


def test_evaluate_writes_the_analysis(tmp_path: Path, colour_encoder) -> None:
    data = load_flickr8k(known_flickr8k(tmp_path / "d", "original"), "test")
    out = tmp_path / "out"
    options = Flickr8kOptions(out=out, prefixes=("", "a photo of "), batch_size=4, workers=0, gallery_sizes=(3, 6, 9),
                              subsets=2, examples=2, progress=False)
    result = evaluate(colour_encoder, data, options)
    saved = json.loads((out / "flickr8k-color-test.json").read_text())
    assert saved == json.loads(json.dumps(result))
    n = len(EXPECTED_T2I)
    assert saved["n_images"] == 6 and saved["n_captions"] == n
    assert saved["prefix"] == ""
    assert saved["text_to_image"] == {"R@1": pytest.approx((n - 1) / n), "R@5": 1.0, "R@10": 1.0, "median_rank": 1.0}
    assert saved["image_to_text"] == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "median_rank": 1.0}
    assert [p["prefix"] for p in saved["prefixes"]] == ["", "a photo of "]
    assert saved["prefixes"][0]["text_to_image"] == saved["text_to_image"]
    assert saved["prefixes"][1]["image_to_text"]["R@1"] == 1.0  # "a photo of" names no colour: same answers
    assert {"image_encoding", "data_loading", "text_encoding", "scoring", "total"} <= set(saved["timings"])
    assert all("text_encoding" in p["timings"] and "scoring" in p["timings"] for p in saved["prefixes"])
    assert [g["size"] for g in saved["gallery_size"]] == [3, 6]
    assert saved["gallery_size"][1]["text_to_image"]["R@1"] == pytest.approx((n - 1) / n)
    assert sum(row["n_captions"] for row in saved["caption_length"]) == n
    assert saved["reference"] is None and saved["cache"] == {"images": "miss", "texts": {"": "miss",
                                                                                      "a photo of ": "miss"}}
    for name in saved["figures"].values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "flickr8k-color-test.md").read_text()
    assert "published R@5" in report and "'a photo of '" in report and "gallery size" in report


def test_reference_and_slug() -> None:
    assert model_slug("ViT-B/32") == "vit-b-32" and model_slug("tiny-clip.pt") == "tiny-clip"
    assert reference_for("ViT-B/32") == {"text_to_image": 0.8054, "image_to_text": 0.9140}
    assert reference_for("ViT-B-32") == reference_for("ViT-B/32") and reference_for("RN50") is None


def _flags(root: Path, out: Path, checkpoint: Path) -> list[str]:
    return ["flickr8k", "--root", str(root), "--model", str(checkpoint), "--out", str(out), "--prefix", "",
            "--prefix", "a photo of ", "--batch-size", "4", "--workers", "0", "--device", "cpu",
            "--gallery-sizes", "3", "6", "100", "--subsets", "2", "--examples", "2", "--no-progress"]


def test_command_line_writes_every_file_and_reuses_the_cache(tmp_path: Path, tiny_checkpoint: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    root, out = known_flickr8k(tmp_path / "d", "kaggle"), tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run([sys.executable, "-m", "clip_app.bench", *_flags(root, out, tiny_checkpoint)], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "text->image R@1" in first.stdout
    slug = "tiny-clip"
    expected = {f"flickr8k-{slug}.json", f"flickr8k-{slug}.md", "flickr8k-summary.md",
                f"flickr8k-{slug}-text-to-image-examples.png", f"flickr8k-{slug}-image-to-text-examples.png",
                f"flickr8k-{slug}-gallery-size.png", f"flickr8k-{slug}-caption-length.png",
                f"flickr8k-{slug}-prefixes.png"}
    assert expected <= {p.name for p in out.iterdir()}
    cached = sorted((out / "cache").iterdir())
    assert len(cached) == 3  # the images, and the captions under each prefix
    stamps = {p: p.stat().st_mtime_ns for p in cached}
    result = json.loads((out / f"flickr8k-{slug}.json").read_text())
    assert result["cache"] == {"images": "miss", "texts": {"": "miss", "a photo of ": "miss"}}

    assert main(_flags(root, out, tiny_checkpoint)) == 0  # the same command again, in-process (saves start-up)
    assert "text->image R@1" in capsys.readouterr().out
    again = json.loads((out / f"flickr8k-{slug}.json").read_text())
    assert again["cache"] == {"images": "hit", "texts": {"": "hit", "a photo of ": "hit"}}
    assert not {"image_encoding", "data_loading", "text_encoding"} & set(again["timings"])
    assert {p: p.stat().st_mtime_ns for p in sorted((out / "cache").iterdir())} == stamps
    for direction in ("text_to_image", "image_to_text"):
        assert again[direction] == result[direction]


def test_command_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["flickr8k", "--root", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no Flickr8k data set found" in capsys.readouterr().err
    root = known_flickr8k(tmp_path / "d", "original")
    assert main(["flickr8k", "--root", str(root), "--model", str(tmp_path / "missing.pt"), "--device", "cpu",
                 "--out", str(tmp_path / "o")]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["flickr8k", "--root", str(root), "--batch-size", "0"])
    assert exit_info.value.code == 2 and "positive integer" in capsys.readouterr().err


def test_text_cache_key_depends_on_model_texts_order_and_prefix() -> None:
    from clip_app.bench.features import text_cache_key

    base = text_cache_key("m", ["a", "b"], "p")
    assert base == text_cache_key("m", ["a", "b"], "p")
    others = {text_cache_key("n", ["a", "b"], "p"), text_cache_key("m", ["b", "a"], "p"),
              text_cache_key("m", ["a", "b"], "q"), text_cache_key("m", ["ab"], "p"), text_cache_key("m", ["a"], "p")}
    assert base not in others and len(others) == 5


def _as_fp16_run(encoder, monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
    """The same model as it reports itself on a GPU (dtype float16), its encoders stubbed: returns their row."""
    row = torch.nn.functional.normalize(torch.arange(1.0, encoder.dim + 1), dim=0)
    monkeypatch.setattr(encoder, "dtype", torch.float16)
    monkeypatch.setattr(encoder, "encode_pixels", lambda pixels: row.repeat(len(pixels), 1))
    monkeypatch.setattr(encoder, "encode_texts", lambda texts: row.repeat(len(texts), 1))
    return row


def test_features_cached_at_another_precision_are_not_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = load_flickr8k(known_flickr8k(tmp_path / "d", "original"), "test")
    options = Flickr8kOptions(out=tmp_path / "out", batch_size=4, workers=0, progress=False)
    captions = list(data.captions)
    fp32_images, state = image_features(color_encoder(), data, options, StageTimer())
    fp32_texts, text_state = caption_features(color_encoder(), captions, "", options, StageTimer())
    assert (state, text_state) == ("miss", "miss")
    again = color_encoder()  # same model and precision: both read from the cache
    assert image_features(again, data, options, StageTimer())[1] == "hit"
    assert caption_features(again, captions, "", options, StageTimer())[1] == "hit"

    fp16 = color_encoder()
    row = _as_fp16_run(fp16, monkeypatch)
    timer = StageTimer()
    images, state = image_features(fp16, data, options, timer)
    texts, text_state = caption_features(fp16, captions, "", options, timer)
    assert (state, text_state) == ("miss", "miss")
    assert torch.equal(images, row.repeat(data.n_images, 1)) and torch.equal(texts, row.repeat(len(captions), 1))
    assert {"image_encoding", "data_loading", "text_encoding"} <= set(timer.as_dict())
    # and the fp32 entries are still there for the fp32 model
    assert torch.equal(image_features(color_encoder(), data, options, StageTimer())[0], fp32_images)
    assert torch.equal(caption_features(color_encoder(), captions, "", options, StageTimer())[0], fp32_texts)


def test_grid_rows_show_the_ranks_the_metrics_count(tmp_path: Path, colour_encoder) -> None:
    data = load_flickr8k(known_flickr8k(tmp_path / "d", "original"), "test")
    images = encode_image_files(colour_encoder, data.image_paths, batch_size=4, workers=0, progress=False)
    texts = colour_encoder.encode_texts(list(data.captions))  # an image's two captions tie: same colour word
    rows = text_to_image_rows(data, texts, images, range(data.n_captions), "q")
    assert [[p.correct for p in row.results].index(True) + 1 for row in rows] == EXPECTED_T2I
    assert all(row.extra is None and len(row.results) == 5 for row in rows)
    rows = image_to_text_rows(data, images, texts, range(data.n_images), "q")
    assert [[p.correct for p in row.results].index(True) + 1 for row in rows] == EXPECTED_I2T
    # red.jpg's top caption is its second one ("a red ball ..."), not the purple one
    assert rows[0].results[0].content == data.captions[1] and rows[0].results[0].correct


def _hand_made_result(model: str, reference: dict | None) -> dict:
    t2i = {"R@1": 0.91666, "R@5": 1.0, "R@10": 1.0, "median_rank": 2.5}
    i2t = {"R@1": 0.5, "R@5": 0.75, "R@10": 1.0, "median_rank": 1.0}
    return {"model": model, "split": "test", "layout": "original", "split_source": "split.txt", "n_images": 6,
            "n_captions": 12, "device": "cpu", "prefix": "", "text_to_image": t2i, "image_to_text": i2t,
            "reference": reference, "prefixes": [{"prefix": "", "text_to_image": t2i, "image_to_text": i2t},
                                                 {"prefix": "a | b ", "text_to_image": t2i, "image_to_text": i2t}],
            "gallery_size": [{"size": 3, "subsets": 2, "text_to_image": t2i, "image_to_text": i2t,
                              "text_to_image_std": {"R@1": 0.1234, "R@5": 0.0, "R@10": 0.0},
                              "image_to_text_std": {"R@1": 0.0, "R@5": 0.0, "R@10": 0.0}}],
            "caption_length": [{"words": "1-6", "n_captions": 12, "R@1": 0.91666, "R@5": 1.0, "R@10": 1.0}],
            "timings": {"image_encoding": 1.23456, "total": 2.0}, "images_per_second": 4.86,
            "cache": {"images": "miss", "texts": {"": "miss"}}, "figures": {}}


def test_markdown_report_tables_hold_the_numbers() -> None:
    from clip_app.bench.flickr8k.report import markdown_report, summary_markdown
    from clip_app.bench.output import MISSING

    lines = markdown_report(_hand_made_result("m", {"text_to_image": 0.8054, "image_to_text": 0.914})).splitlines()
    assert "| text \u2192 image | 0.9167 | 1.0000 | 1.0000 | 2.5 | 0.8054 |" in lines
    assert "| image \u2192 text | 0.5000 | 0.7500 | 1.0000 | 1 | 0.9140 |" in lines
    assert "|---|---:|---:|---:|---:|---:|" in lines  # the shared table writer: numbers right-aligned
    assert "| `'a \\| b '` | 0.9167 | 1.0000 | 1.0000 | 0.5000 | 0.7500 | 1.0000 | 2.5 | 1 |" in lines
    assert ("| 3 | 2 | 0.917 \u00b1 0.123 | 1.000 \u00b1 0.000 | 1.000 \u00b1 0.000 | 0.500 \u00b1 0.000 "
            "| 0.750 \u00b1 0.000 | 1.000 \u00b1 0.000 |") in lines
    assert "| 1-6 | 12 | 0.9167 | 1.0000 | 1.0000 |" in lines
    assert "| image_encoding | 1.235 |" in lines and "| total | 2.000 |" in lines
    summary = summary_markdown([_hand_made_result("m", {"text_to_image": 0.8054, "image_to_text": 0.914}),
                                _hand_made_result("n", None)]).splitlines()
    assert "| m | `''` | 0.9167 | 1.0000 | 0.8054 | 1.0000 | 0.5000 | 0.7500 | 0.9140 | 1.0000 |" in summary
    assert f"| n | `''` | 0.9167 | 1.0000 | {MISSING} | 1.0000 | 0.5000 | 0.7500 | {MISSING} | 1.0000 |" in summary
