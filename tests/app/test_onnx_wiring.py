"""--backend / --precision reach every encoder built from Settings: the index CLI, the app, the benchmarks; a
library built on one backend is used on the other without a rebuild."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest

import app as launcher
from clip_app.bench.__main__ import main as bench_main
from clip_app.config import Settings, add_settings_arguments
from clip_app.index import main as index_main
from clip_app.service import App
from tests.support.fakes import solid_image
from tests.support.flickr8k_helpers import known_flickr8k
from tests.support.imagenet_helpers import colour_samples, make_kaggle
from tests.support.library_helpers import image_bytes, write_image

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    return parser.parse_args(list(argv))


def test_settings_read_backend_precision_and_threads_from_env_and_flags() -> None:
    env = {"CLIP_APP_BACKEND": "ONNX", "CLIP_APP_PRECISION": "int8", "CLIP_APP_ONNX_THREADS": "3"}
    settings = Settings.from_env(env)
    assert (settings.backend, settings.precision, settings.onnx_threads) == ("onnx", "int8", 3)
    flagged = Settings.from_args(_parse("--backend", "torch", "--precision", "fp32", "--onnx-threads", "1"), env)
    assert (flagged.backend, flagged.precision, flagged.onnx_threads) == ("torch", "fp32", 1)
    assert Settings().backend == "auto" and Settings().precision == "fp32"
    assert flagged.encoder_options()["backend"] == "torch" and flagged.encoder_options()["threads"] == 1
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        Settings.from_env({"CLIP_APP_BACKEND": "gpu"})
    with pytest.raises(ValueError, match="CLIP_APP_ONNX_THREADS='many' is not a whole number"):
        Settings.from_env({"CLIP_APP_ONNX_THREADS": "many"})
    with pytest.raises(SystemExit):
        _parse("--precision", "int4")
    launched = Settings.from_args(launcher.parse_args(["--backend", "onnx", "--precision", "int8"]), {})
    assert (launched.backend, launched.precision) == ("onnx", "int8")


def test_index_cli_on_onnx_uses_a_library_built_with_torch(onnx_exports: dict, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    checkpoint, model_dir = onnx_exports["vit"]["checkpoint"], onnx_exports["model_dir"]
    common = ["--model", str(checkpoint), "--device", "cpu", "--gallery", str(tmp_path / "gallery"),
              "--library", str(tmp_path / "lib.pth"), "--model-dir", str(model_dir)]
    for colour in ("red", "blue"):
        write_image(tmp_path / "in" / f"{colour}.png", colour)
    assert index_main([*common, "--backend", "torch", "add", str(tmp_path / "in" / "red.png")]) == 0
    with caplog.at_level(logging.INFO):
        assert index_main([*common, "--backend", "onnx", "add", str(tmp_path / "in" / "blue.png")]) == 0
    assert "backend onnx (ONNX Runtime fp32" in caplog.text
    capsys.readouterr()
    assert index_main([*common, "--backend", "onnx", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == 2  # one row from each backend in one library: the model stamp did not change
    assert index_main([*common, "--backend", "onnx", "check"]) == 0  # no rebuild asked for
    assert index_main([*common, "--backend", "torch", "check"]) == 0


def test_app_from_settings_runs_on_onnx(onnx_exports: dict, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    vit = onnx_exports["vit"]
    settings = Settings(model=str(vit["checkpoint"]), device="cpu", backend="onnx", gallery_dir=tmp_path / "g",
                        library_file=tmp_path / "lib.pth", model_dir=onnx_exports["model_dir"])
    with caplog.at_level(logging.INFO):
        app = App.from_settings(settings)
    assert app.encoder.backend == "onnx"
    assert "clip-app ready" in caplog.text and "backend onnx (ONNX Runtime fp32" in caplog.text
    result = app.classify(image_bytes("red"), "red, blue, green", save=False)
    reference = App.from_settings(Settings(model=str(vit["checkpoint"]), device="cpu", backend="torch",
                                           gallery_dir=tmp_path / "g2", library_file=tmp_path / "lib2.pth"))
    want = reference.classify(image_bytes("red"), "red, blue, green", save=False)
    assert [row[0] for row in _rows(result)] == [row[0] for row in _rows(want)]
    for (_, got), (_, expected) in zip(_rows(result), _rows(want)):
        assert got == pytest.approx(expected, abs=2e-3)
    assert app.encoder.encode_images([solid_image("red")]).shape[1] == app.encoder.dim


def _rows(result) -> list[tuple[str, float]]:
    return [(p.label, float(p.probability)) for p in result.scores]


def test_bench_imagenet_and_flickr8k_accept_backend_and_precision(onnx_exports: dict, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint, model_dir = onnx_exports["vit"]["checkpoint"], onnx_exports["model_dir"]
    root = make_kaggle(tmp_path / "kaggle", colour_samples())
    out = tmp_path / "imagenet"
    flags = ["--root", str(root), "--model", str(checkpoint), "--prompts", "single", "--limit", "5",
             "--batch-size", "4", "--workers", "0", "--device", "cpu", "--errors", "0", "--no-progress",
             "--model-dir", str(model_dir), "--backend", "onnx"]
    assert bench_main(["imagenet", *flags, "--out", str(out)]) == 0
    fp32 = json.loads(next(out.glob("imagenet-*.json")).read_text())
    assert fp32["backend"] == "onnx" and fp32["precision"] == "fp32"
    assert bench_main(["imagenet", *flags, "--precision", "int8", "--out", str(out)]) == 0
    int8 = json.loads(next(out.glob("imagenet-*.json")).read_text())
    assert int8["precision"] == "int8" and not int8["image_features_cached"]  # int8 never reuses fp32 features
    flickr = known_flickr8k(tmp_path / "flickr", "kaggle")
    assert bench_main(["flickr8k", "--root", str(flickr), "--model", str(checkpoint), "--out", str(tmp_path / "f"),
                       "--batch-size", "4", "--workers", "0", "--device", "cpu", "--gallery-sizes", "3",
                       "--subsets", "1", "--examples", "1", "--no-progress", "--model-dir", str(model_dir),
                       "--backend", "onnx"]) == 0
    record = json.loads(next((tmp_path / "f").glob("flickr8k-*.json")).read_text())
    assert record["backend"] == "onnx" and record["precision"] == "fp32"
    capsys.readouterr()


def test_a_bad_backend_in_the_environment_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CLIP_APP_BACKEND", "gpu")
    with pytest.raises(SystemExit) as stopped:  # app.py: a usage error, as for every bad CLIP_APP_* value
        launcher.main([])
    assert stopped.value.code == 2
    assert "unknown backend 'gpu': use one of auto, torch, onnx" in capsys.readouterr().err
    assert index_main(["--gallery", str(tmp_path / "g"), "--library", str(tmp_path / "l.pth"), "list"]) == 2
    assert "unknown backend 'gpu'" in capsys.readouterr().err
