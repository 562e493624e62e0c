"""The index manager's command line: end to end in a subprocess, and each command's exit status in-process."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clip_app.index import main
from tests.support.fakes import save_tiny_checkpoint
from tests.support.library_helpers import image_bytes, write_image

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, model: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m clip_app.index --model M --gallery G --library L ARGS` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for var in ("CLIP_APP_MODEL", "CLIP_APP_GALLERY", "CLIP_APP_LIBRARY", "CLIP_APP_DEVICE"):
        env.pop(var, None)
    command = [sys.executable, "-m", "clip_app.index", "--model", str(model), "--device", "cpu",
               "--gallery", str(tmp_path / "gallery"), "--library", str(tmp_path / "lib.pth"), *args]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def _cli(tmp_path: Path, model: Path, *args: str) -> list[str]:
    return ["--model", str(model), "--device", "cpu", "--gallery", str(tmp_path / "gallery"),
            "--library", str(tmp_path / "lib.pth"), *args]


@pytest.fixture()
def inputs(tmp_path: Path) -> Path:
    """A folder tree to add: three images (one nested, one a JPEG), one duplicate, one broken, one text file."""
    folder = tmp_path / "inputs"
    write_image(folder / "red.png", "red")
    write_image(folder / "deeper" / "blue.jpg", "blue", "JPEG")
    write_image(folder / "deeper" / "more" / "green.PNG", "green")
    (folder / "copy of red.png").write_bytes((folder / "red.png").read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (folder / "notes.txt").write_text("skipped: not an image extension")
    return folder


def test_the_command_line_end_to_end(tmp_path: Path, tiny_checkpoint: Path, inputs: Path) -> None:
    added = _run(tmp_path, tiny_checkpoint, "add", str(inputs), str(tmp_path / "missing.png"))
    assert added.returncode == 0, added.stderr
    out = added.stdout
    assert "3 added, 1 duplicate" in out and "2 failed" in out
    assert "failed: " + str(inputs / "broken.jpg") in out and "missing.png: no such file" in out
    assert "duplicate: " in out and "notes.txt" not in out
    assert "adding" in added.stderr  # the progress bar

    listed = _run(tmp_path, tiny_checkpoint, "list", "--json")
    rows = json.loads(listed.stdout)
    assert [r["id"] for r in rows] == [1, 2, 3] and listed.returncode == 0
    for row in rows:
        assert (tmp_path / "gallery" / row["file"]).is_file()
    raw = torch.load(tmp_path / "lib.pth", weights_only=True)
    assert raw["files"].split("\n") == [r["file"] for r in rows]
    assert [bytes(d.tolist()).hex() for d in raw["sha256"]] == [r["sha256"] for r in rows]

    (tmp_path / "gallery" / rows[0]["file"]).unlink()
    checked = _run(tmp_path, tiny_checkpoint, "check")
    assert checked.returncode == 1 and "missing_file" in checked.stdout


def test_add_reports_each_failure_and_fails_only_when_nothing_was_processed(tmp_path: Path, tiny_checkpoint: Path,
                                                                            capsys) -> None:
    (tmp_path / "bad.png").write_bytes(b"nope")
    assert main(_cli(tmp_path, tiny_checkpoint, "add", str(tmp_path / "bad.png"))) == 1
    assert "failed: " in capsys.readouterr().out
    write_image(tmp_path / "ok.png", "red")
    assert main(_cli(tmp_path, tiny_checkpoint, "add", str(tmp_path / "ok.png"))) == 0
    assert main(_cli(tmp_path, tiny_checkpoint, "add", str(tmp_path / "ok.png"))) == 0  # a duplicate is processed
    assert "duplicate: " in capsys.readouterr().out


def test_list_stats_remove_and_unknown_ids(tmp_path: Path, tiny_checkpoint: Path, inputs: Path, capsys) -> None:
    assert main(_cli(tmp_path, tiny_checkpoint, "add", str(inputs))) == 0
    capsys.readouterr()
    assert main(_cli(tmp_path, tiny_checkpoint, "stats", "--json")) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["count"] == 3 and stats["dim"] == 32 and stats["file_size"] == (tmp_path / "lib.pth").stat().st_size
    assert stats["model"].startswith("sha256:") and stats["model"] == stats["running_model"]
    assert main(_cli(tmp_path, tiny_checkpoint, "remove", "2", "99")) == 1
    assert "99" in capsys.readouterr().err
    assert main(_cli(tmp_path, tiny_checkpoint, "remove", "2")) == 0
    assert main(_cli(tmp_path, tiny_checkpoint, "list")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines[1:]] == ["1", "3"]
    assert main(_cli(tmp_path, tiny_checkpoint, "stats")) == 0
    assert "images:        2" in capsys.readouterr().out


def test_check_and_repair(tmp_path: Path, tiny_checkpoint: Path, inputs: Path, capsys) -> None:
    assert main(_cli(tmp_path, tiny_checkpoint, "add", str(inputs))) == 0
    (tmp_path / "gallery" / "000002.jpg").unlink()
    write_image(tmp_path / "gallery" / "holiday.png", "yellow")
    capsys.readouterr()
    assert main(_cli(tmp_path, tiny_checkpoint, "check", "--json")) == 1
    kinds = sorted(p["kind"] for p in json.loads(capsys.readouterr().out)["problems"])
    assert kinds == ["foreign_file", "missing_file"]
    assert main(_cli(tmp_path, tiny_checkpoint, "repair")) == 0
    out = capsys.readouterr().out
    assert "dropped the row of ID 2" in out and "holiday.png as ID 4" in out
    assert main(_cli(tmp_path, tiny_checkpoint, "check")) == 0


def test_errors_are_one_line_and_exit_2(tmp_path: Path, tiny_checkpoint: Path, capsys) -> None:
    write_image(tmp_path / "ok.png", "red")
    assert main(_cli(tmp_path, tmp_path / "no-such-model.pt", "list")) == 2
    assert capsys.readouterr().err.strip().startswith("error: CLIP checkpoint file not found")

    assert main(_cli(tmp_path, tiny_checkpoint, "add", str(tmp_path / "ok.png"))) == 0
    other = save_tiny_checkpoint(tmp_path / "other.pt", seed=1)
    before = (tmp_path / "lib.pth").read_bytes()
    capsys.readouterr()
    assert main(_cli(tmp_path, other, "add", str(tmp_path / "ok.png"))) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "rebuild" in err and "other.pt" in err and "tiny-clip.pt" in err
    assert main(_cli(tmp_path, other, "check")) == 1  # check lists the mismatch as a problem
    assert "model_mismatch" in capsys.readouterr().out
    assert (tmp_path / "lib.pth").read_bytes() == before

    (tmp_path / "lib.pth").write_bytes(b"\x00garbage")
    assert main(_cli(tmp_path, tiny_checkpoint, "stats")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot be read" in err
    assert (tmp_path / "lib.pth").read_bytes() == b"\x00garbage"


def test_rebuild_switches_the_library_to_the_running_model(tmp_path: Path, tiny_checkpoint: Path, inputs: Path,
                                                           capsys) -> None:
    assert main(_cli(tmp_path, tiny_checkpoint, "add", str(inputs))) == 0
    other = save_tiny_checkpoint(tmp_path / "other.pt", seed=1)
    assert main(_cli(tmp_path, other, "rebuild")) == 0
    assert "3 images" in capsys.readouterr().out
    assert main(_cli(tmp_path, other, "check")) == 0
    assert main(_cli(tmp_path, other, "add", str(tmp_path / "inputs" / "red.png"))) == 0  # a duplicate now


def test_first_run_indexes_the_gallery_from_the_command_line(tmp_path: Path, tiny_checkpoint: Path, capsys) -> None:
    gallery = tmp_path / "gallery"
    (gallery / "000001.png").parent.mkdir()
    (gallery / "000001.png").write_bytes(image_bytes("red"))
    (gallery / "000002.jpg").write_bytes(image_bytes("blue", "JPEG"))
    assert main(_cli(tmp_path, tiny_checkpoint, "list")) == 0
    captured = capsys.readouterr()
    assert "first run: indexed 2 gallery images" in captured.err
    assert [line.split("\t")[1] for line in captured.out.strip().splitlines()] == ["000001.png", "000002.jpg"]


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_a_library_that_cannot_be_written_is_one_error_line_and_exit_2(tmp_path: Path, tiny_checkpoint: Path,
                                                                      capsys, where: str) -> None:
    (tmp_path / "plain-file").write_text("not a folder")
    library = tmp_path / "plain-file" / "lib.pth" if where == "under-a-file" else Path("/proc/clip-app-lib.pth")
    write_image(tmp_path / "ok.png", "red")
    for command in (["list"], ["stats"], ["add", str(tmp_path / "ok.png")]):
        started = time.monotonic()
        code = main(["--model", str(tiny_checkpoint), "--device", "cpu", "--gallery", str(tmp_path / "gallery"),
                     "--library", str(library), *command])
        err = capsys.readouterr().err.strip()
        assert code == 2 and time.monotonic() - started < 30, (command, err)  # not the 300 s lock timeout
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and "lock file" in err, err
        assert str(library) in err


def test_an_os_error_while_repairing_is_one_error_line_and_exit_2(tmp_path: Path, tiny_checkpoint: Path, capsys,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import clip_app.library.gallery

    (tmp_path / "gallery").mkdir()
    (tmp_path / "gallery" / "notes.txt").write_text("not an image: repair moves it to .quarantine/")
    assert main(_cli(tmp_path, tiny_checkpoint, "list")) == 0

    def refuse(folder: Path, name: str) -> str:
        raise PermissionError(13, "Permission denied", str(folder / name), None, str(folder / ".quarantine" / name))

    monkeypatch.setattr(clip_app.library.gallery, "quarantine", refuse)
    capsys.readouterr()
    assert main(_cli(tmp_path, tiny_checkpoint, "repair")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "notes.txt" in err[-1] and "Permission denied" in err[-1]
    assert (tmp_path / "gallery" / "notes.txt").is_file()


def test_list_stats_check_and_remove_work_without_loading_the_model(tmp_path: Path, capsys,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from clip.clip import _transform

    import clip_app.index
    from clip_app.encoders import ClipEncoder, ModelLoadError
    from clip_app.library import FeatureLibrary
    from tests.support.fakes import TINY_RESOLUTION, ColorClip

    named = ClipEncoder.from_model(ColorClip(), _transform(TINY_RESOLUTION), name="ViT-B/32")  # made "by ViT-B/32"
    library = FeatureLibrary(tmp_path / "gallery", tmp_path / "lib.pth", named)
    library.add([(image_bytes(c), f"{c}.png") for c in ("red", "green", "blue")])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")

    def no_weights(*args, **kwargs):
        raise ModelLoadError("no weights on this machine")

    monkeypatch.setattr(clip_app.index, "ClipEncoder", no_weights)  # loading any model fails (and never downloads)
    for model in ("ViT-B/32", str(junk)):
        flags = _cli(tmp_path, Path(model))
        capsys.readouterr()
        assert main([*flags, "list"]) == 0
        assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == ["1", "2", "3"]
        assert main([*flags, "stats", "--json"]) == 0
        stats = json.loads(capsys.readouterr().out)
        assert stats["model"] == "ViT-B/32" and stats["count"] == 3
        assert stats["running_model"] == ("ViT-B/32" if model == "ViT-B/32" else stats["running_model"])
        assert main([*flags, "check"]) == (0 if model == "ViT-B/32" else 1)  # the stamps compared without weights
        assert main([*flags, "add", str(write_image(tmp_path / "cyan.png", "cyan"))]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        if model == "ViT-B/32":  # add needs the model: now it is loaded
            assert err == "error: no weights on this machine"
        else:  # junk.pt is another model than the library's: refused before anything is loaded
            assert err.startswith("error: the feature library") and "junk.pt" in err
    assert stats["running_model"].startswith("sha256:")  # junk.pt is identified by its hash
    assert main([*_cli(tmp_path, Path("ViT-B/32")), "remove", "2"]) == 0
    assert [e.id for e in FeatureLibrary(tmp_path / "gallery", tmp_path / "lib.pth", named)] == [1, 3]
    assert not list((tmp_path / "gallery").glob("000002.*"))


def test_the_advice_is_an_exact_command_that_fixes_the_problem(tmp_path: Path, tiny_checkpoint: Path, capsys,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    write_image(tmp_path / "ok.png", "red")
    write_image(tmp_path / "more.png", "blue")
    assert main(_cli(tmp_path, tiny_checkpoint, "add", str(tmp_path / "ok.png"), str(tmp_path / "more.png"))) == 0
    other = save_tiny_checkpoint(tmp_path / "other.pt", seed=1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the advice works from any folder
    capsys.readouterr()

    def advice(text: str) -> list[list[str]]:
        return [shlex.split(c)[3:] for c in re.findall(r"`(python -m clip_app\.index [^`]*)`", text)]

    assert main(_cli(tmp_path, other, "add", str(tmp_path / "ok.png"))) == 2  # another model: refused
    from_error = advice(capsys.readouterr().err)
    assert main(_cli(tmp_path, other, "check")) == 1
    from_check = advice(capsys.readouterr().out)
    assert len(from_check) == 2 and from_error[0] == from_check[0] == from_check[1]  # the detail and the summary
    assert from_check[0][-1] == "rebuild" and str(other) in from_check[0] and str(tmp_path / "lib.pth") in from_check[0]
    assert main(from_check[0]) == 0  # as advised: rebuild with the running model, this library and gallery
    assert main(_cli(tmp_path, other, "check")) == 0

    next((tmp_path / "gallery").glob("000002.*")).unlink()
    capsys.readouterr()
    assert main(_cli(tmp_path, other, "check")) == 1
    (repair,) = advice(capsys.readouterr().out)
    assert repair[-1] == "repair" and main(repair) == 0
    assert main(_cli(tmp_path, other, "check")) == 0
