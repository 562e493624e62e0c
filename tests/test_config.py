import argparse
from pathlib import Path

import pytest

from clip_app.config import DEFAULT_MODEL, Settings, add_settings_arguments, resolve_device


def parse(argv):
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    return parser.parse_args(argv)


def test_defaults():
    s = Settings()
    assert s.model == DEFAULT_MODEL == "ViT-B/32"
    assert s.device == "auto"
    assert s.gallery_dir == Path("gallery")
    assert s.library_file == Path("features_library.pth")
    assert s.model_dir == Path.home() / ".cache" / "clip"


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        Settings().model = "RN50"  # type: ignore[misc]


def test_environment_overrides(tmp_path):
    env = {"CLIP_APP_MODEL": "RN50", "CLIP_APP_DEVICE": "cpu", "CLIP_APP_GALLERY": str(tmp_path / "g"),
           "CLIP_APP_LIBRARY": str(tmp_path / "lib.pth"), "CLIP_APP_MODEL_DIR": str(tmp_path / "w")}
    s = Settings.from_env(env)
    assert (s.model, s.device) == ("RN50", "cpu")
    assert s.gallery_dir == tmp_path / "g" and s.library_file == tmp_path / "lib.pth"
    assert s.model_dir == tmp_path / "w"


def test_blank_environment_values_are_ignored():
    assert Settings.from_env({"CLIP_APP_MODEL": "  "}).model == DEFAULT_MODEL


def test_flags_win_over_environment(tmp_path):
    args = parse(["--model", "ViT-L/14", "--gallery", str(tmp_path), "--library", "x.pth", "--model-dir", "m"])
    s = Settings.from_args(args, {"CLIP_APP_MODEL": "RN50", "CLIP_APP_DEVICE": "cpu"})
    assert s.model == "ViT-L/14"
    assert s.device == "cpu"  # not given as a flag: the environment stays
    assert s.gallery_dir == tmp_path and s.library_file == Path("x.pth") and s.model_dir == Path("m")


def test_device_resolution(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device("CPU") == "cpu"
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert Settings(device="cuda:1").resolved_device() == "cuda:1"
