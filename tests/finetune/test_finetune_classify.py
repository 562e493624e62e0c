"""`python -m clip_app.finetune classify` on a tiny CLIP: zero-shot start, WiSE-FT end points, a label set whose
trained head the app uses, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clip_app.classify import build_classifier, cosines
from clip_app.encoders import ClipEncoder
from clip_app.finetune.__main__ import main
from clip_app.finetune.data import read_class_folders
from clip_app.finetune.objectives import LinearHead, VisualClassifier, wise
from clip_app.images import open_image
from clip_app.label_heads import LabelHead
from clip_app.label_sets import LabelSetStore
from clip_app.library import FeatureLibrary
from clip_app.prompts import SINGLE_TEMPLATE
from clip_app.service import App
from tests.support.app_helpers import png_bytes
from tests.support.fakes import save_tiny_checkpoint
from tests.support.finetune_helpers import classify_args, colour_folders


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("base") / "tiny.pt", seed=1)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_folders(tmp_path_factory.mktemp("folders") / "colours")


def zero_shot_predictions(encoder: ClipEncoder, root: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The app's zero-shot answer for every val image: (predicted [N], true [N], labels)."""
    val = read_class_folders(root, "val", classes=read_class_folders(root, "train").classes)
    features = encoder.encode_images([open_image(p) for p in val.paths])
    classifier = build_classifier(encoder, val.labels, [SINGLE_TEMPLATE])
    return cosines(features, classifier).argmax(dim=1), torch.tensor(val.targets), val.labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, base: Path, folders: Path) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run") / "out"
    assert main(classify_args(folders, base, out)) == 0
    return out, json.loads((out / "finetune.json").read_text())


def test_the_head_starts_as_the_zero_shot_classifier(base: Path, folders: Path) -> None:
    encoder = ClipEncoder(str(base), device="cpu")
    predicted, _, labels = zero_shot_predictions(encoder, folders)
    classifier = build_classifier(encoder, labels, [SINGLE_TEMPLATE])
    model = VisualClassifier(encoder.model.visual, LinearHead(classifier)).eval()
    val = read_class_folders(folders, "val", classes=read_class_folders(folders, "train").classes)
    pixels = torch.stack([encoder.preprocess(open_image(p)) for p in val.paths])
    with torch.inference_mode():
        logits = model(pixels)
    features = encoder.encode_pixels(pixels)
    assert torch.allclose(logits / 100, cosines(features, classifier), atol=1e-5)
    assert torch.equal(logits.argmax(dim=1), predicted)


def test_epoch_zero_is_zero_shot_accuracy_and_training_improves_it(trained: tuple[Path, dict], base: Path,
                                                                   folders: Path) -> None:
    out, result = trained
    predicted, truth, _ = zero_shot_predictions(ClipEncoder(str(base), device="cpu"), folders)
    assert result["before"]["top1"] == pytest.approx(float((predicted == truth).double().mean()))
    assert [e["epoch"] for e in result["epochs"]] == [1, 2, 3]
    assert result["after"]["top1"] > result["before"]["top1"]
    assert result["after"]["wise"]["alpha"] == 0.5
    assert (out / "finetune.md").is_file() and (out / "finetune.png").is_file()
    assert all(result["timings"][stage] > 0 for stage in ("load_model", "read_data", "zero_shot_head",
                                                          "evaluate_after", "total"))


def test_wise_end_points_are_the_zero_shot_and_the_fine_tuned_weights() -> None:
    start = {"w": torch.randn(3, 4), "b": torch.randn(3)}
    end = {"w": torch.randn(3, 4), "b": torch.randn(3)}
    assert all(torch.equal(wise(start, end, 0.0)[k], start[k]) for k in start)
    assert all(torch.equal(wise(start, end, 1.0)[k], end[k]) for k in start)
    assert torch.allclose(wise(start, end, 0.5)["w"], (start["w"] + end["w"]) / 2)
    with pytest.raises(ValueError):
        wise(start, end, 1.5)


def test_wise_zero_saves_the_zero_shot_model(base: Path, folders: Path, tmp_path: Path) -> None:
    assert main(classify_args(folders, base, tmp_path, **{"--epochs": 1, "--wise": 0})) == 0
    result = json.loads((tmp_path / "finetune.json").read_text())
    assert result["after"]["wise"]["top1"] == result["before"]["top1"]
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    start = torch.load(base, weights_only=True)
    rounded = ClipEncoder(str(base), device="cpu").model.state_dict()
    assert all(torch.equal(saved[k].float(), rounded[k].float()) for k in start)


def test_the_label_set_carries_the_head_and_the_app_uses_it(trained: tuple[Path, dict], tmp_path: Path,
                                                             base: Path) -> None:
    out, result = trained
    store = LabelSetStore(out / "label_sets.json")
    name = result["after"]["label_set"]
    labels = store.get(name)
    head = store.head(name)
    assert labels == ["blue", "green", "red", "yellow"] and head is not None
    assert head.model == result["after"]["model_identity"]
    tuned = ClipEncoder(str(out / "model.pt"), device="cpu")
    app = App(tuned, FeatureLibrary(tmp_path / "g", tmp_path / "lib.pth", tuned), store)
    answer = app.classify(png_bytes("red", (36, 36)), ", ".join(labels), save=False)
    feature = tuned.encode_images([open_image(png_bytes("red", (36, 36)))])[0]
    expected = head.rank(labels, feature)
    assert [(s.label, round(s.probability, 5)) for s in answer.scores] == \
        [(s.label, round(s.probability, 5)) for s in expected]
    other = ClipEncoder(str(base), device="cpu")  # another model: the head does not apply, zero-shot answers
    plain = App(other, FeatureLibrary(tmp_path / "g2", tmp_path / "lib2.pth", other), store)
    zero = plain.classify(png_bytes("red", (36, 36)), ", ".join(labels), save=False)
    classifier = build_classifier(other, labels, [SINGLE_TEMPLATE])
    cos = cosines(other.encode_images([open_image(png_bytes("red", (36, 36)))]), classifier)[0]
    assert {s.label: round(s.cosine, 5) for s in zero.scores} == {lb: round(float(c), 5) for lb, c in zip(labels, cos)}


def test_label_set_heads_round_trip_follow_renames_and_drop_on_edit(tmp_path: Path) -> None:
    store = LabelSetStore(tmp_path / "label_sets.json")
    head = LabelHead("sha256:abc", torch.randn(2, 4), torch.randn(2), 50.0)
    store.save("pets", ["cat", "dog"], head=head)
    again = store.head("pets")
    assert again is not None and torch.equal(again.weight, head.weight) and again.scale == 50.0
    assert store.find_head(["cat", "dog"], "sha256:abc")[0] == "pets"
    assert store.find_head(["cat", "dog"], "ViT-B/32") is None
    store.rename("pets", "animals")
    assert store.head("animals") is not None and store.head("pets") is None
    store.save("animals", ["cat", "dog"])  # same labels: the head stays
    assert store.head("animals") is not None
    store.save("animals", ["cat", "dog", "bird"])  # edited labels: the head no longer fits
    assert store.head("animals") is None
    raw = json.loads((tmp_path / "label_sets.json").read_text())
    assert "heads" not in raw and raw["sets"] == {"animals": ["cat", "dog", "bird"]}


def test_bad_class_folders_are_refused(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = colour_folders(tmp_path / "data", train=1, val=1)
    (root / "train" / "empty").mkdir()
    assert main(classify_args(root, base, tmp_path / "a")) == 2
    assert "holds no images" in capsys.readouterr().err
    (root / "train" / "empty").rmdir()
    for path in (root / "val").rglob("*.png"):
        path.unlink()
    for folder in (root / "val").iterdir():
        folder.rmdir()
    (root / "val").rmdir()
    assert main(classify_args(root, base, tmp_path / "b")) == 2
    assert "'val' split is missing" in capsys.readouterr().err


def test_patience_stops_when_evaluations_stop_improving(base: Path, folders: Path, tmp_path: Path) -> None:
    argv = classify_args(folders, base, tmp_path, **{"--epochs": 4, "--lr": 1e-12, "--head-lr": 1e-12,
                                                      "--patience": 1, "--freeze-visual": True})
    assert main(argv) == 0
    result = json.loads((tmp_path / "finetune.json").read_text())
    assert [e["epoch"] for e in result["epochs"]] == [1]  # no better than zero-shot after one evaluation: stop
    assert result["best_epoch"] == 0 and not (tmp_path / "checkpoint.pt").exists()
