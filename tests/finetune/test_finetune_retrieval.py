"""`python -m clip_app.finetune retrieval` on a tiny CLIP (CPU): it learns, reloads everywhere, resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clip_app.bench.__main__ import main as bench_main
from clip_app.encoders import ClipEncoder, file_sha256
from clip_app.finetune import retrieval
from clip_app.finetune.__main__ import main
from clip_app.finetune.loop import LoopState
from tests.support.fakes import save_tiny_checkpoint
from tests.support.finetune_helpers import colour_captions, parse, retrieval_args

KEYS = {"task", "base_model", "data", "hyperparameters", "before", "after", "best_epoch", "epochs", "timings"}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("base") / "tiny.pt")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 training pairs (2 images per colour), 8 test images."""
    return colour_captions(tmp_path_factory.mktemp("small") / "data", per_colour=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, base: Path) -> tuple[Path, Path, dict]:
    """The learnable set fine-tuned through the command line: (data, out, finetune.json)."""
    root = tmp_path_factory.mktemp("learn")
    data = colour_captions(root / "data", per_colour=3)
    out = root / "out"
    argv = retrieval_args(data, base, out, **{"--epochs": 5, "--batch-size": 16, "--lr": 1e-3, "--warmup": 1})
    assert main(argv) == 0
    return data, out, json.loads((out / "finetune.json").read_text())


def test_fine_tuning_lifts_text_to_image_recall(trained: tuple[Path, Path, dict]) -> None:
    _, out, result = trained
    assert set(result) == KEYS
    before, after = result["before"]["text_to_image"]["R@1"], result["after"]["text_to_image"]["R@1"]
    assert after >= before + 0.25, (before, after)
    assert [e["epoch"] for e in result["epochs"]] == [1, 2, 3, 4, 5]
    assert all({"loss", "text_to_image", "image_to_text"} <= set(e) for e in result["epochs"])
    best = result["epochs"][result["best_epoch"] - 1]  # model.pt: the best epoch by mean R@5 (stored as clip.load
    assert result["best_epoch"] >= 1 and best["mean_R@5"] == max(e["mean_R@5"] for e in result["epochs"])  # rounds)
    assert (out / "finetune.md").is_file() and (out / "finetune.png").stat().st_size > 0
    assert not (out / "checkpoint.pt").exists()  # a finished run keeps only its model
    assert result["timings"]["items_per_second"] > 0
    assert all(result["timings"][stage] > 0 for stage in ("load_model", "read_data", "evaluate_before",
                                                          "evaluate_after", "total"))


def test_the_checkpoint_reloads_through_model_with_the_same_metrics(trained: tuple[Path, Path, dict],
                                                                     tmp_path: Path) -> None:
    data, out, result = trained
    model = out / "model.pt"
    assert result["after"]["model_identity"] == f"sha256:{file_sha256(model)}"
    argv = ["flickr8k", "--root", str(data), "--model", str(model), "--prefix", "", "--out", str(tmp_path),
            "--workers", "0", "--no-progress", "--gallery-sizes", "4", "--examples", "1"]
    assert bench_main(argv) == 0
    bench = json.loads(next(tmp_path.glob("flickr8k-*.json")).read_text())
    assert bench["model_identity"] == result["after"]["model_identity"]
    assert bench["text_to_image"] == result["after"]["text_to_image"]
    assert bench["image_to_text"] == result["after"]["image_to_text"]


def _interrupt_at(step: int):
    def hook(state: LoopState) -> None:
        if state.step == step:
            raise KeyboardInterrupt
    return hook


def test_resume_after_ctrl_c_equals_an_uninterrupted_run(small: Path, base: Path, tmp_path: Path) -> None:
    flags = {"--epochs": 2, "--batch-size": 16, "--augment": True, "--seed": 3}  # 2 steps per epoch
    whole = retrieval.run(parse(retrieval_args(small, base, tmp_path / "a", **flags)))
    assert whole.result.status == "finished"
    cut = retrieval.run(parse(retrieval_args(small, base, tmp_path / "b", **flags)), step_hook=_interrupt_at(3))
    assert cut.result.status == "interrupted" and (tmp_path / "b" / "checkpoint.pt").is_file()
    assert main(retrieval_args(small, base, tmp_path / "b", **flags)) == 2  # occupied --out is refused
    resumed = retrieval.run(parse(retrieval_args(small, base, tmp_path / "b", **flags, **{"--resume": True})))
    assert resumed.result.status == "finished"
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in e.items()} for e in whole.summary["epochs"]]
    assert strip == resumed.summary["epochs"]
    assert whole.summary["after"] == resumed.summary["after"]


def test_freeze_visual_leaves_the_image_tower_bit_identical(small: Path, base: Path, tmp_path: Path) -> None:
    outcome = retrieval.run(parse(retrieval_args(small, base, tmp_path, **{"--freeze": "visual", "--max-steps": 2})))
    assert outcome.result.status == "max_steps"
    trained = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]
    start = ClipEncoder(str(base), device="cpu").model.state_dict()  # as loaded: matrices rounded to fp16
    visual = [k for k in start if k.startswith("visual.")]
    assert visual and all(torch.equal(trained[k], start[k]) for k in visual)
    assert not torch.equal(trained["text_projection"], start["text_projection"])  # the text side did train


def test_bad_input_is_refused_with_a_message(small: Path, base: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(retrieval_args(small, base, tmp_path / "a", **{"--batch-size": 64})) == 2
    assert "fewer than one batch" in capsys.readouterr().err
    assert main(retrieval_args(small, base, tmp_path / "b", **{"--eval-split": "dev"})) == 2
    assert "split" in capsys.readouterr().err
    assert main(retrieval_args(tmp_path / "nowhere", base, tmp_path / "c")) == 2
    assert main(retrieval_args(small, "open_clip:ViT-B-32/laion2b_s34b_b79k", tmp_path / "e")) == 2
    assert "OpenAI CLIP models" in capsys.readouterr().err
    assert main(retrieval_args(small, base, tmp_path / "d", **{"--resume": True})) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err


def test_undecodable_images_are_skipped_and_listed(base: Path, tmp_path: Path) -> None:
    data = colour_captions(tmp_path / "data", per_colour=2)
    broken = data / "images" / "red-0.jpg"
    broken.write_bytes(b"not a jpeg")
    outcome = retrieval.run(parse(retrieval_args(data, base, tmp_path / "out", **{"--max-steps": 1})))
    assert outcome.result.status == "max_steps"
    skipped = outcome.summary["data"]["skipped_images"]
    assert list(skipped) == [str(broken)]
    assert outcome.summary["data"]["train_pairs"] == 30


def test_a_nan_loss_stops_and_keeps_the_last_good_model(small: Path, base: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    real, calls = retrieval.clip_loss, []

    def poisoned(*args: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        loss = real(*args)
        return loss * float("nan") if len(calls) == 4 else loss  # epoch 2, second step

    monkeypatch.setattr(retrieval, "clip_loss", poisoned)
    assert main(retrieval_args(small, base, tmp_path, **{"--epochs": 2, "--batch-size": 16})) == 1
    assert "loss became nan" in capsys.readouterr().err
    result = json.loads((tmp_path / "finetune.json").read_text())
    assert [e["epoch"] for e in result["epochs"]] == [1]
    assert (tmp_path / "checkpoint.pt").is_file()  # epoch 1's resumable state
    assert result["after"]["model_identity"] == f"sha256:{file_sha256(tmp_path / 'model.pt')}"
