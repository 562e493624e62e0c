"""Optimizer and schedule: AdamW with weight decay on weights only, cosine learning rate with linear warmup."""

from __future__ import annotations

import math
from typing import Iterable

import torch


def decays(name: str, parameter: torch.Tensor) -> bool:
    """True for weights (matrices, convolution kernels): not gains, biases, embeddings or the logit scale."""
    return parameter.ndim >= 2 and "embedding" not in name


def param_groups(named: Iterable[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float) -> list[dict]:
    """The trainable parameters in two AdamW groups: weights (decayed) and the rest (no decay), at one base lr."""
    decayed, plain = [], []
    for name, parameter in named:
        if parameter.requires_grad:
            (decayed if decays(name, parameter) else plain).append(parameter)
    groups = [{"params": decayed, "weight_decay": weight_decay, "lr": lr, "base_lr": lr},
              {"params": plain, "weight_decay": 0.0, "lr": lr, "base_lr": lr}]
    return [g for g in groups if g["params"]]


def build_optimizer(groups: list[dict]) -> torch.optim.AdamW:
    """AdamW over the parameter groups (betas and eps of CLIP's fine-tuning recipes: 0.9, 0.98, 1e-6)."""
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen")
    return torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-6)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Learning-rate multiplier at optimizer step `step` (0-based): linear warmup to 1, then cosine to 0 at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Every group's lr = its base_lr x factor (the schedule is a pure function of the step: nothing to save)."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
