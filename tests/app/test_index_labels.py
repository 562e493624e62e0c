"""`python -m clip_app.index labels example|examples`: few-shot examples on the command line (in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clip_app.index import main
from clip_app.label_sets import LabelSetStore
from tests.support.library_helpers import write_image


def _cli(tmp_path: Path, model: Path, *args: str) -> list[str]:
    return ["--model", str(model), "--device", "cpu", "--gallery", str(tmp_path / "gallery"),
            "--library", str(tmp_path / "lib.pth"), *args]


def test_labels_example_adds_lists_removes_and_forgets_removed_images(tmp_path: Path, tiny_checkpoint: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    for colour in ("red", "green", "blue"):
        write_image(tmp_path / "in" / f"{colour}.png", colour)
    assert main(_cli(tmp_path, tiny_checkpoint, "add", str(tmp_path / "in"))) == 0
    store = LabelSetStore(tmp_path / "label_sets.json")
    store.save("kinds", "type A, type B")
    capsys.readouterr()

    assert main(_cli(tmp_path, tiny_checkpoint, "labels", "example", "kinds", "TYPE A", "1", "2")) == 0
    assert capsys.readouterr().out == "type A\t1 2\n"
    assert main(_cli(tmp_path, tiny_checkpoint, "labels", "example", "kinds", "type B", "3", "--json")) == 0
    assert json.loads(capsys.readouterr().out) == {"type A": [1, 2], "type B": [3]}
    assert main(_cli(tmp_path, tiny_checkpoint, "labels", "examples", "kinds", "--json")) == 0
    assert json.loads(capsys.readouterr().out) == {"type A": [1, 2], "type B": [3]}

    assert main(_cli(tmp_path, tiny_checkpoint, "labels", "example", "kinds", "type A", "7")) == 1
    assert "no image with ID 7" in capsys.readouterr().err
    assert main(_cli(tmp_path, tiny_checkpoint, "labels", "example", "kinds", "type Z", "1")) == 1
    assert "'type Z' is not a label of 'kinds'" in capsys.readouterr().err
    assert main(_cli(tmp_path, tiny_checkpoint, "labels", "example", "nope", "type A", "1")) == 1
    assert "no label set named 'nope'" in capsys.readouterr().err
    assert main(_cli(tmp_path, tiny_checkpoint, "labels", "example", "--remove", "kinds", "type B", "1")) == 1
    assert "are not examples of label 'type B'" in capsys.readouterr().err
    assert store.examples("kinds") == {"type A": [1, 2], "type B": [3]}  # nothing changed by the failures

    assert main(_cli(tmp_path, tiny_checkpoint, "labels", "example", "--remove", "kinds", "type A", "1")) == 0
    assert main(_cli(tmp_path, tiny_checkpoint, "remove", "3")) == 0  # the image goes, its example with it
    assert store.examples("kinds") == {"type A": [2]}
    capsys.readouterr()
    assert main(_cli(tmp_path, tiny_checkpoint, "labels", "examples", "kinds")) == 0
    assert capsys.readouterr().out == "type A\t2\n"
