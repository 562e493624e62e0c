"""`python -m clip_app.bench imagenet` end to end: a subprocess with the tiny checkpoint writes every output; a
second run reuses the cached features; bad input exits 2 with a clear message."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clip_app.bench.__main__ import main
from clip_app.encoders import ClipEncoder
from tests.support.imagenet_helpers import colour_samples, make_kaggle, make_official

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_cli_writes_every_output_then_reuses_the_cache(tmp_path: Path, tiny_checkpoint: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    root = make_kaggle(tmp_path / "kaggle", colour_samples())
    out = tmp_path / "results"
    argv = ["imagenet", "--root", str(root), "--model", str(tiny_checkpoint), "--prompts", "raw,single",
            "--limit", "7", "--batch-size", "4", "--workers", "1", "--device", "cpu", "--out", str(out),
            "--errors", "4", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "CLIP_APP_MODEL": "", "CLIP_APP_DEVICE": ""}
    proc = subprocess.run([sys.executable, "-m", "clip_app.bench", *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "7 images (class-balanced subset of 11) of 5 classes" in proc.stdout
    assert "TOP 1 Accuracy" in proc.stdout and "| tiny-clip.pt | single | 7 |" in proc.stdout

    record = json.loads((out / "imagenet-tiny-clip.json").read_text())
    assert record["model"] == "tiny-clip.pt" and record["model_identity"].startswith("sha256:")
    assert record["dataset"]["layout"] == "kaggle" and record["dataset"]["limit"] == 7
    assert set(record["prompts"]) == {"raw", "single"} and not record["image_features_cached"]
    for entry in record["prompts"].values():
        assert {"top1", "top5", "mean_per_class", "n_images", "seconds_per_image", "images_per_second",
                "timings"} <= set(entry)
        assert 0 <= entry["top1"] <= entry["top5"] <= 1 and entry["n_images"] == 7
        assert entry["seconds_per_image"] * entry["images_per_second"] == pytest.approx(1.0)
        assert {"data_loading", "image_encoding", "text_encoding"} <= set(entry["timings"])
    log = (out / "imagenet-tiny-clip.log").read_text()
    assert log.count("TOP 1 Accuracy: ") == log.count("TOP 5 Accuracy: ") == log.count("Averaged Time: ") == 2
    assert "LOC_synset_mapping.txt" in log  # where the raw prompts came from
    rows = _csv_rows(out / "results.csv")
    assert [(r["model"], r["prompts"], r["n_images"]) for r in rows] == [("tiny-clip.pt", "raw", "7"),
                                                                         ("tiny-clip.pt", "single", "7")]
    assert float(rows[1]["top1"]) == pytest.approx(record["prompts"]["single"]["top1"], abs=1e-6)
    table = (out / "imagenet.md").read_text()
    assert "| Model | Prompts | Images | Top-1 % | Top-5 % |" in table and "Paper top-1 %" in table
    for png in ("imagenet-top1.png", "imagenet-tiny-clip-errors.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC

    # a second run (in-process, the same command line) must not run the model on images or prompts again
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("encoder called although the features are cached")

    monkeypatch.setattr(ClipEncoder, "encode_pixels", forbidden)
    monkeypatch.setattr(ClipEncoder, "encode_texts", forbidden)
    monkeypatch.setenv("CLIP_APP_MODEL", "")
    capsys.readouterr()
    assert main(argv) == 0
    second = json.loads((out / "imagenet-tiny-clip.json").read_text())
    assert second["image_features_cached"] and all(p["text_features_cached"] for p in second["prompts"].values())
    assert {m: p["top1"] for m, p in second["prompts"].items()} == {m: p["top1"] for m, p in record["prompts"].items()}
    assert len(_csv_rows(out / "results.csv")) == 4


def test_cli_bad_root_lists_the_layouts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["imagenet", "--root", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "no ImageNet validation data recognised" in err and "LOC_val_solution.csv" in err
    assert not (tmp_path / "r").exists()


def test_cli_missing_devkit_and_bad_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_official(tmp_path / "o", colour_samples()[:2])
    (root / "ILSVRC2012_devkit_t12" / "data" / "meta.mat").unlink()
    assert main(["imagenet", "--root", str(root)]) == 2
    assert "missing meta.mat" in capsys.readouterr().err
    assert main(["imagenet", "--root", str(root), "--prompts", "raw,fancy"]) == 2
    assert "unknown prompt mode(s) fancy" in capsys.readouterr().err
    assert main(["imagenet", "--root", str(root), "--limit", "0"]) == 2
    assert "--limit" in capsys.readouterr().err


def test_cli_unknown_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_official(tmp_path / "o", colour_samples()[:2])
    code = main(["imagenet", "--root", str(root), "--model", str(tmp_path / "missing.pt"), "--out",
                 str(tmp_path / "r")])
    assert code == 2
    assert "checkpoint file not found" in capsys.readouterr().err


def test_cli_unreadable_image_is_a_clear_error(tmp_path: Path, tiny_checkpoint: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    root = make_official(tmp_path / "o", colour_samples()[:2])
    victim = sorted(root.rglob("ILSVRC2012_val_*.JPEG"))[0]
    victim.write_bytes(victim.read_bytes()[:40])  # truncated JPEG
    code = main(["imagenet", "--root", str(root), "--model", str(tiny_checkpoint), "--prompts", "single",
                 "--workers", "1", "--no-progress", "--out", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot be read" in err and victim.name in err
