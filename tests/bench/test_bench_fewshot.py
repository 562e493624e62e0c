"""`python -m clip_app.bench fewshot` on a tiny made-up image-folder data set: outputs, cache, draws from train
only, no leakage from val into any hyper-parameter, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clip_app.bench.__main__ import main
from clip_app.bench.features import FeatureCache
from clip_app.bench.fewshot.cli import evaluate_model
from clip_app.bench.fewshot.data import read_image_folder, read_imagenet_pair
from clip_app.bench.fewshot.protocol import draw_shots, evaluate, plan_draws
from clip_app.bench.fewshot.synthetic import synthetic_features
from clip_app.encoders import ClipEncoder
from clip_app.prompts import imagenet_wnids
from tests.support.fakes import color_encoder
from tests.support.fewshot_helpers import MEANINGLESS, write_image_folder
from tests.support.imagenet_helpers import write_jpeg

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FOLDERS = {name.replace(" ", "_"): colour for name, colour in MEANINGLESS.items()}  # type_A -> "type A"


@pytest.fixture()
def folder_set(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "data", FOLDERS, n_train=8, n_val=6)


def test_cli_writes_json_table_and_plot_then_reuses_the_cache(folder_set: Path, tmp_path: Path,
                                                              tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    argv = ["fewshot", "--root", str(folder_set), "--model", str(tiny_checkpoint), "--shots", "1,4", "--seeds", "2",
            "--methods", "zeroshot,prototype,tip,linear", "--out", str(out), "--workers", "0", "--device", "cpu",
            "--no-progress", "--timing"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "5 classes, 40 train and 30 val images" in printed and "per method (s):" in printed
    record = json.loads((out / "fewshot-tiny-clip.json").read_text())
    assert {"zero_shot", "methods", "n_classes", "n_val", "timings"} <= set(record)
    assert record["n_classes"] == 5 and record["n_val"] == 30 and 0 <= record["zero_shot"]["top1"] <= 1
    assert set(record["methods"]) == {"zeroshot", "prototype", "tip", "linear"}
    for cells in record["methods"].values():
        assert set(cells) == {"1", "4"}
        for cell in cells.values():
            assert {"mean", "std", "runs"} <= set(cell) and [r["seed"] for r in cell["runs"]] == [1, 2]
            assert cell["mean"] == pytest.approx(sum(r["top1"] for r in cell["runs"]) / 2)
    assert record["methods"]["tip"]["1"]["runs"][0]["params"] == {"alpha": 1.0, "beta": 5.5}  # 1 shot: defaults
    assert {"data_loading", "image_encoding", "text_encoding", "adaptation", "total"} <= set(record["timings"])
    assert 5 * 4 <= record["dataset"]["n_train_encoded"] < 40  # only the drawn shots (of 2 seeds) are encoded
    table = (out / "fewshot.md").read_text()
    assert "| method | 1-shot | 4-shot |" in table and "60.32" in table and "65.51" in table
    assert "arXiv:2207.09519" in table
    assert (out / "fewshot-tiny-clip.png").read_bytes()[:8] == PNG_MAGIC

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("encoder called although the features are cached")

    monkeypatch.setattr(ClipEncoder, "encode_pixels", forbidden)
    monkeypatch.setattr(ClipEncoder, "encode_texts", forbidden)
    assert main(argv) == 0
    second = json.loads((out / "fewshot-tiny-clip.json").read_text())
    assert second["image_features_cached"]
    assert all(second["methods"][m][k]["mean"] == record["methods"][m][k]["mean"] for m in record["methods"]
               for k in ("1", "4"))


def test_meaningless_names_zero_shot_at_chance_adapted_methods_learn(folder_set: Path, tmp_path: Path) -> None:
    (folder_set / "classnames.json").write_text(json.dumps({f: f"type {f[-1]}" for f in FOLDERS}))
    data = read_image_folder(folder_set)
    assert data.classnames == ("type A", "type B", "type C", "type D", "type E")
    record = evaluate_model(color_encoder(), data, "single", [8], [1], ["zeroshot", "prototype", "tip", "linear"],
                            FeatureCache(tmp_path / "cache"), progress=False)
    assert record["zero_shot"]["top1"] == pytest.approx(0.2)
    for method in ("prototype", "tip", "linear"):
        assert record["methods"][method]["8"]["mean"] >= 0.9, method


def test_draws_come_from_train_nested_in_k_and_are_seeded() -> None:
    labels = [0] * 10 + [1] * 3 + [2] * 7
    four = draw_shots(labels, 3, 4, seed=1)
    assert len(draw_shots(labels, 3, 1, seed=1)) == 3 and len(four) == 4 + 3 + 4  # class 1 has only 3
    assert [labels[p] for p in draw_shots(labels, 3, 1, seed=1)] == [0, 1, 2]
    assert set(draw_shots(labels, 3, 1, seed=1)) <= set(four)  # nested
    assert draw_shots(labels, 3, 4, seed=1) == four and draw_shots(labels, 3, 4, seed=2) != four
    plan = plan_draws(labels, 3, [1, 4], [1, 2])
    assert set(plan.pool) <= set(range(len(labels)))
    for (k, seed), rows in plan.rows.items():
        assert sorted(plan.pool[r] for r in rows.tolist()) == sorted(draw_shots(labels, 3, k, seed))


def test_val_never_influences_a_hyper_parameter() -> None:
    """Scramble val labels and move every val feature: every chosen hyper-parameter stays the same, only top-1 moves.
    (A choice made on val would follow the scrambled labels: checked by a val-tuned choice that does move.)"""
    feats = synthetic_features(6, 8, n_val=120, dim=64)
    plan = plan_draws(feats.train_labels.tolist(), 6, [2, 8], [1, 2])
    pool = torch.tensor(plan.pool)
    args = (feats.text_weights, feats.train[pool], feats.train_labels[pool], plan)
    methods = ["prototype", "tip", "linear"]
    honest = evaluate(*args, feats.val, feats.val_labels, methods)
    scrambled_labels = feats.val_labels[torch.randperm(120, generator=torch.Generator().manual_seed(3))]
    other_val = torch.nn.functional.normalize(feats.val + 0.1 * torch.randn(120, 64), dim=1)
    scrambled = evaluate(*args, other_val, scrambled_labels, methods)
    params = [(r.method, r.k, r.seed, r.params) for r in honest.runs]
    assert params == [(r.method, r.k, r.seed, r.params) for r in scrambled.runs]
    assert [r.top1 for r in honest.runs] != [r.top1 for r in scrambled.runs]
    # the control: choosing lambda on val does depend on val, so the comparison above can fail
    from clip_app.adapt import LAMBDA_GRID, Examples, prototype_head

    def val_best(labels: torch.Tensor) -> float:
        examples = Examples(feats.train[pool][plan.rows[(8, 1)]], feats.train_labels[pool][plan.rows[(8, 1)]], 6)
        accs = [float((prototype_head(feats.text_weights, examples, lam).logits(feats.val).argmax(1) == labels)
                      .float().mean()) for lam in LAMBDA_GRID]
        return LAMBDA_GRID[max(range(len(accs)), key=lambda i: accs[i])]

    flipped = (feats.text_weights.T @ feats.val.T).argmax(0)  # labels that reward the pure text head (lambda 1)
    assert val_best(feats.val_labels) != val_best(flipped)


def test_test_folder_is_accepted_for_val_and_bad_input_is_clear(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    root = write_image_folder(tmp_path / "t", {"cat": "red", "dog": "blue"}, 2, 1, val_name="test")
    data = read_image_folder(root)
    assert data.classnames == ("cat", "dog") and len(data.val) == 2 and "test/" in data.source
    assert main(["fewshot", "--root", str(tmp_path / "nowhere")]) == 2
    assert "missing the folder" in capsys.readouterr().err
    (tmp_path / "half" / "train" / "a").mkdir(parents=True)
    assert main(["fewshot", "--root", str(tmp_path / "half")]) == 2
    assert "missing val/" in capsys.readouterr().err
    (root / "classnames.json").write_text(json.dumps({"cat": "a cat"}))
    assert main(["fewshot", "--root", str(root)]) == 2
    assert "no name for the class folder(s) dog" in capsys.readouterr().err
    for flags, message in ((["--shots", "0,2"], "--shots must be positive"), (["--shots", "x"], "whole numbers"),
                           (["--methods", "tip,magic"], "unknown method(s) magic"), (["--seeds", "0"], "--seeds"),
                           ([], "--root DIR is required")):
        argv = ["fewshot"] + (["--root", str(tmp_path)] if flags else []) + flags
        assert main(argv) == 2
        assert message in capsys.readouterr().err


def test_imagenet_shots_from_train_folders_val_through_the_readers(tmp_path: Path) -> None:
    wnids = imagenet_wnids()[:3]
    for split, count in (("train", 3), ("val", 2)):
        for c, wnid in enumerate(wnids):
            for i in range(count):
                write_jpeg(tmp_path / split / wnid / f"{wnid}_{split}_{i}.JPEG", (80 * c, 40, 200 - 60 * c))
    data = read_imagenet_pair(tmp_path / "val", tmp_path / "train")
    assert data.n_classes == 1000 and len(data.train) == 9 and len(data.val) == 6
    assert sorted(set(data.train.labels)) == [0, 1, 2] and sorted(set(data.val.labels)) == [0, 1, 2]
    assert all("train" in str(p) for p in data.train.files)
