"""The pure parts of fine-tuning: the loss, the logit-scale clamp, weight-decay groups, the schedule, batch plans,
augmentation and the --out guard."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clip_app.finetune.data import augment, epoch_batches, item_rng
from clip_app.finetune.errors import FinetuneError
from clip_app.finetune.objectives import MAX_LOG_SCALE, clamp_logit_scale, clip_loss
from clip_app.finetune.optim import decays, lr_factor, param_groups
from clip_app.finetune.outputs import prepare_out
from tests.support.fakes import make_tiny_clip


def test_clip_loss_is_the_symmetric_cross_entropy_of_scaled_cosines() -> None:
    torch.manual_seed(0)
    images, texts = torch.randn(5, 8), torch.randn(5, 8)
    scale = torch.tensor(math.log(20.0))
    logits = 20.0 * F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).T
    expected = (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5))) / 2
    assert torch.allclose(clip_loss(images, texts, scale), expected)
    assert float(clip_loss(images, images, torch.tensor(MAX_LOG_SCALE))) < 1e-3  # matched pairs: near zero


def test_the_logit_scale_is_clamped_at_100() -> None:
    model = make_tiny_clip()
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    clamp_logit_scale(model)
    assert float(model.logit_scale.detach().exp()) == pytest.approx(100.0)


def test_weight_decay_only_on_weights() -> None:
    model = make_tiny_clip()
    decayed = {name for name, p in model.named_parameters() if decays(name, p)}
    assert {"visual.conv1.weight", "text_projection", "visual.proj",
            "transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.0.mlp.c_fc.weight"} <= decayed
    for name in ("token_embedding.weight", "positional_embedding", "visual.class_embedding", "logit_scale",
                 "visual.positional_embedding", "ln_final.weight", "ln_final.bias",
                 "transformer.resblocks.0.mlp.c_fc.bias"):
        assert name not in decayed
    groups = param_groups(model.named_parameters(), 1e-5, 0.2)
    assert [g["weight_decay"] for g in groups] == [0.2, 0.0]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_the_schedule_warms_up_linearly_then_decays_by_cosine_to_zero() -> None:
    assert [lr_factor(s, 4, 12) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 4, 12) == 1.0
    assert lr_factor(8, 4, 12) == pytest.approx(0.5)
    assert lr_factor(12, 4, 12) == pytest.approx(0.0)
    assert lr_factor(0, 0, 10) == 1.0


def test_batches_and_crops_depend_only_on_seed_epoch_and_index() -> None:
    first = epoch_batches(10, 3, seed=1, epoch=0, n_batches=3)
    assert first == epoch_batches(10, 3, seed=1, epoch=0, n_batches=3)
    assert first != epoch_batches(10, 3, seed=1, epoch=1, n_batches=3)
    flat = [i for batch in first for i in batch]
    assert len(flat) == len(set(flat)) == 9
    image = Image.effect_noise((40, 30), 50).convert("RGB")
    a = augment(image, 16, item_rng(0, 2, 5))
    assert a.shape == (3, 16, 16)
    assert torch.equal(a, augment(image, 16, item_rng(0, 2, 5)))
    assert not torch.equal(a, augment(image, 16, random.Random(99)))


def test_out_holding_another_run_is_refused_and_overwrite_removes_only_its_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    prepare_out(tmp_path, resume=False, overwrite=False)  # unrelated files are no run
    (tmp_path / "finetune.json").write_text("{}")
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(FinetuneError, match="holds another fine-tuning run"):
        prepare_out(tmp_path, resume=False, overwrite=False)
    with pytest.raises(FinetuneError, match="no checkpoint.pt"):
        prepare_out(tmp_path, resume=True, overwrite=False)
    prepare_out(tmp_path, resume=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
