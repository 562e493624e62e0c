"""The index manager's labels, classify, search, tag and list --tag commands: JSON shapes, exit status, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clip_app.index import main
from tests.support.library_helpers import write_image


def cli(tmp_path: Path, model: Path, *args: str) -> list[str]:
    return ["--model", str(model), "--device", "cpu", "--gallery", str(tmp_path / "gallery"),
            "--library", str(tmp_path / "lib.pth"), *args]


def run_json(capsys: pytest.CaptureFixture, argv: list[str]) -> object:
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.fixture()
def library(tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture) -> Path:
    """A library of three images made by the index manager."""
    for colour in ("red", "green", "blue"):
        write_image(tmp_path / "in" / f"{colour}.png", colour)
    assert main(cli(tmp_path, tiny_checkpoint, "add", str(tmp_path / "in"))) == 0
    capsys.readouterr()
    return tmp_path


def test_labels_add_list_rename_remove(library: Path, tiny_checkpoint: Path, capsys) -> None:
    run = lambda *a: main(cli(library, tiny_checkpoint, *a))  # noqa: E731
    assert run("labels", "add", "colours", "red, green,, red, blue", "--template", "a {} photo.") == 0
    assert "saved label set 'colours': 3 labels" in capsys.readouterr().out
    listed = run_json(capsys, cli(library, tiny_checkpoint, "labels", "list", "--json"))
    mine = [s for s in listed if not s["builtin"]]
    assert mine == [{"name": "colours", "labels": ["red", "green", "blue"], "template": "a {} photo.",
                     "threshold": None, "thresholds": {}, "tagged": False, "builtin": False}]
    assert listed[0]["builtin"] and len(listed[0]["labels"]) == 1000
    assert json.loads((library / "label_sets.json").read_text())["sets"]["colours"]["template"] == "a {} photo."
    assert run("labels", "rename", "colours", "rgb") == 0
    capsys.readouterr()
    assert [s["name"] for s in run_json(capsys, cli(library, tiny_checkpoint, "labels", "list", "--json"))][1:] == \
        ["rgb"]
    assert run("labels", "remove", "rgb") == 0
    capsys.readouterr()
    assert run("labels", "list") == 0 and "rgb" not in capsys.readouterr().out


def test_labels_bad_input_stores_nothing(library: Path, tiny_checkpoint: Path, capsys) -> None:
    run = lambda *a: main(cli(library, tiny_checkpoint, *a))  # noqa: E731
    assert run("labels", "add", "ok", "red") == 0
    before = (library / "label_sets.json").read_bytes()
    for args, message in ((("labels", "add", "empty", " , "), "no labels"),
                          (("labels", "add", "  ", "red"), "name"),
                          (("labels", "add", "x" * 81, "red"), "at most 80"),
                          (("labels", "add", "t", "red", "--template", "no braces"), "{}"),
                          (("labels", "remove", "nope"), "no label set"),
                          (("labels", "rename", "nope", "other"), "no label set")):
        capsys.readouterr()
        assert run(*args) == 1, args
        assert message in capsys.readouterr().err
    assert (library / "label_sets.json").read_bytes() == before


def test_classify_json_shape_best_first(library: Path, tiny_checkpoint: Path, capsys) -> None:
    images = [str(library / "in" / "red.png"), str(library / "in" / "blue.png")]
    out = run_json(capsys, cli(library, tiny_checkpoint, "classify", *images, "--labels", "cat, dog, car", "--json"))
    assert [item["image"] for item in out] == images
    for item in out:
        assert set(item) == {"image", "labels"}
        probs = [entry["probability"] for entry in item["labels"]]
        assert sorted(entry["label"] for entry in item["labels"]) == ["car", "cat", "dog"]
        assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-5
        assert all(set(entry) == {"label", "probability", "cosine"} for entry in item["labels"])
    main(cli(library, tiny_checkpoint, "labels", "add", "pets", "cat, dog"))
    capsys.readouterr()
    by_set = run_json(capsys, cli(library, tiny_checkpoint, "classify", images[0], "--set", "pets", "--json",
                                  "--none-of-these"))
    assert [e["label"] for e in by_set[0]["labels"]] != [] and isinstance(by_set[0]["none_of_these"], bool)
    assert main(cli(library, tiny_checkpoint, "classify", images[0], "--set", "nope")) == 1


def test_search_json_shape(library: Path, tiny_checkpoint: Path, capsys) -> None:
    out = run_json(capsys, cli(library, tiny_checkpoint, "search", "a red square", "-k", "2", "--json"))
    assert set(out) == {"query", "confident", "reason", "results"} and out["query"] == "a red square"
    assert isinstance(out["confident"], bool) and out["reason"]
    assert [set(r) for r in out["results"]] == [{"id", "file", "score", "percentile"}] * 2
    assert out["results"][0]["percentile"] == 100.0 and out["results"][0]["score"] >= out["results"][1]["score"]
    image = str(library / "in" / "green.png")
    by_image = run_json(capsys, cli(library, tiny_checkpoint, "search", "--image", image, "--json"))
    assert by_image["query"] == image and len(by_image["results"]) == 3
    assert by_image["results"][0]["score"] == pytest.approx(1.0, abs=2e-3)  # the image itself
    assert main(cli(library, tiny_checkpoint, "search", "x", "--image", image)) == 2  # one or the other


def test_tag_json_shape_thresholds_and_list_tag(library: Path, tiny_checkpoint: Path, capsys) -> None:
    main(cli(library, tiny_checkpoint, "labels", "add", "things", "cat, dog"))
    capsys.readouterr()
    everything = run_json(capsys, cli(library, tiny_checkpoint, "tag", "things", "--threshold", "-1", "--json"))
    assert everything == {"set": "things", "labels": {
        "cat": {"threshold": -1.0, "count": 3, "ids": [1, 2, 3]},
        "dog": {"threshold": -1.0, "count": 3, "ids": [1, 2, 3]}}}
    strict = run_json(capsys, cli(library, tiny_checkpoint, "tag", "things", "--threshold-for", "dog=1",
                                  "--json"))
    assert strict["labels"]["dog"] == {"threshold": 1.0, "count": 0, "ids": []}
    assert strict["labels"]["cat"]["count"] == 3
    listed = run_json(capsys, cli(library, tiny_checkpoint, "list", "--tag", "cat", "--json"))
    assert [row["id"] for row in listed] == [1, 2, 3]
    assert run_json(capsys, cli(library, tiny_checkpoint, "list", "--tag", "dog", "--set", "things", "--json")) == []
    write_image(library / "in2" / "yellow.png", "yellow")
    assert main(cli(library, tiny_checkpoint, "add", str(library / "in2"))) == 0  # tagged on add
    capsys.readouterr()
    assert [r["id"] for r in run_json(capsys, cli(library, tiny_checkpoint, "list", "--tag", "cat", "--json"))] == \
        [1, 2, 3, 4]
    assert main(cli(library, tiny_checkpoint, "remove", "2")) == 0  # a deleted image leaves no tag
    capsys.readouterr()
    assert [r["id"] for r in run_json(capsys, cli(library, tiny_checkpoint, "list", "--tag", "cat", "--json"))] == \
        [1, 3, 4]
    assert main(cli(library, tiny_checkpoint, "check")) == 0


def test_tag_bad_input_stores_nothing(library: Path, tiny_checkpoint: Path, capsys) -> None:
    main(cli(library, tiny_checkpoint, "labels", "add", "things", "cat, dog"))
    before = (library / "label_sets.json").read_bytes()
    for args, message in ((("tag", "nope"), "no label set"),
                          (("tag", "things", "--threshold", "1.5"), "between -1 and 1"),
                          (("tag", "things", "--threshold", "nan"), "between -1 and 1"),
                          (("tag", "things", "--threshold", "high"), "number"),
                          (("tag", "things", "--threshold-for", "bird=0.2"), "no label 'bird'"),
                          (("tag", "things", "--threshold-for", "cat"), "LABEL=T"),
                          (("list", "--tag", "bird"), "no label 'bird'")):
        capsys.readouterr()
        assert main(cli(library, tiny_checkpoint, *args)) == 1, args
        assert message in capsys.readouterr().err
    assert (library / "label_sets.json").read_bytes() == before and not (library / "lib.pth.tags").exists()


def test_check_reports_and_repair_rebuilds_a_damaged_tags_file(library: Path, tiny_checkpoint: Path, capsys) -> None:
    main(cli(library, tiny_checkpoint, "labels", "add", "things", "cat, dog"))
    main(cli(library, tiny_checkpoint, "tag", "things"))
    (library / "lib.pth.tags").write_bytes(b"garbage")
    capsys.readouterr()
    assert main(cli(library, tiny_checkpoint, "check")) == 1
    assert "tags: the tags file" in capsys.readouterr().out
    assert main(cli(library, tiny_checkpoint, "repair")) == 0
    assert "rebuilt the damaged tags file" in capsys.readouterr().out
    assert main(cli(library, tiny_checkpoint, "check")) == 0
