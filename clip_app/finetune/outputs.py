"""The run folder: which files a run owns, the --out guard, atomic saves, finetune.json, the report and the plot.

DIR/model.pt        the best model: a state dict of OpenAI CLIP's architecture (clip.load(path, jit=False) reads it)
DIR/checkpoint.pt   resumable state (model, optimizer, scaler, loop counters); removed when a run finishes
DIR/finetune.json   {"task", "base_model", "data", "hyperparameters", "before", "after", "best_epoch", "epochs",
                    "timings"}
DIR/finetune.md     the Markdown report;  DIR/finetune.png  loss and metrics per epoch
DIR/label_sets.json (classify) a label sets file holding one set with its trained head
DIR/head.pt         (classify) the head's weights (head.weight [C, D], head.bias [C])
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Callable

import torch

from ..files import replace_atomically
from .errors import FinetuneError

log = logging.getLogger(__name__)

MODEL = "model.pt"
CHECKPOINT = "checkpoint.pt"
RESULT = "finetune.json"
REPORT = "finetune.md"
PLOT = "finetune.png"
LABEL_SETS = "label_sets.json"
HEAD = "head.pt"
OWNED = (MODEL, HEAD, CHECKPOINT, RESULT, REPORT, PLOT, LABEL_SETS)


def prepare_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Check --out: a folder holding another run is refused unless --resume (needs checkpoint.pt) or --overwrite
    (removes that run's files, nothing else)."""
    out = Path(out)
    if resume and overwrite:
        raise FinetuneError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise FinetuneError(f"--out {out} is a file, not a folder")
    present = [name for name in OWNED if (out / name).exists()]
    if resume:
        if not (out / CHECKPOINT).is_file():
            done = " (that run finished; its checkpoint is removed at the end)" if (out / RESULT).exists() else ""
            raise FinetuneError(f"--resume: there is no {CHECKPOINT} in {out} to resume from{done}")
        return
    if present and not overwrite:
        raise FinetuneError(f"{out} holds another fine-tuning run ({', '.join(present)}); pass --resume to continue "
                            "it, --overwrite to replace it, or choose another --out")
    for name in present:
        (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)


def save_atomically(path: Path, write: Callable[[Any], object]) -> None:
    """Write a file atomically (temp file, fsync, rename); FinetuneError when it fails (the old file is kept)."""
    try:
        replace_atomically(path, write)
    except OSError as exc:
        raise FinetuneError(f"could not save {path} ({exc}); the previous file is unchanged") from None


def save_tensors(path: Path, payload: dict) -> None:
    """torch.save a dict of tensors / plain values atomically."""
    save_atomically(path, lambda handle: torch.save(payload, handle))


def save_clip_model(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Save a CLIP state dict as OpenAI's checkpoints store it: the matrices in fp16 (clip.load's build_model rounds
    them so anyway), the rest in fp32. The file is then exactly the model that `--model path` loads."""
    from clip.model import build_model

    model = build_model({k: v.detach().cpu().float() for k, v in state.items()})
    save_tensors(path, {k: v.detach() for k, v in model.state_dict().items()})


def load_checkpoint(path: Path) -> dict:
    """A resumable checkpoint written by save_tensors (loaded with weights_only=True: it never runs code)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # damaged, truncated or foreign file
        raise FinetuneError(f"cannot read the checkpoint {path} ({exc}); start again with --overwrite") from None


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_result(out: Path, result: dict) -> Path:
    """DIR/finetune.json (atomically)."""
    text = json.dumps(_clean(result), indent=2, ensure_ascii=False) + "\n"
    save_atomically(out / RESULT, lambda handle: handle.write(text.encode("utf-8")))
    return out / RESULT


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
    return "" if value is None else str(value)


def flat_metrics(metrics: dict | None, prefix: str = "") -> dict[str, int | float]:
    """{'text_to_image': {'R@1': ..}} -> {'text_to_image R@1': ..}, numbers only."""
    out: dict[str, int | float] = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, dict):
            out.update(flat_metrics(value, f"{prefix}{key} "))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


def markdown_report(result: dict, status: str) -> str:
    """The run as Markdown: what was trained, before/after, per-epoch table, timings."""
    before, after = flat_metrics(result["before"]), flat_metrics(result["after"])
    lines = [f"# Fine-tuning ({result['task']}): {result['base_model']['name']}", "",
             f"Status: {status}. Best epoch: {result['best_epoch']}.", "",
             "## Data", "", *[f"- {k}: {_cell(v) if not isinstance(v, (list, dict)) else json.dumps(v)[:300]}"
                               for k, v in result["data"].items()], "",
             "## Hyper-parameters", "", *[f"- {k}: {v}" for k, v in result["hyperparameters"].items()], "",
             "## Before and after", "", "| metric | before | after |", "|---|---|---|"]
    lines += [f"| {k} | {_cell(before.get(k))} | {_cell(after.get(k))} |" for k in dict.fromkeys([*before, *after])]
    columns = list(dict.fromkeys(k for e in result["epochs"] for k in flat_metrics(e)))
    if columns:
        lines += ["", "## Per epoch", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for epoch in result["epochs"]:
            flat = flat_metrics(epoch)
            lines.append("| " + " | ".join(_cell(flat.get(c)) for c in columns) + " |")
    lines += ["", "## Timings (seconds)", "", *[f"- {k}: {_cell(v)}" for k, v in result["timings"].items()], "",
              f"![loss and metrics per epoch]({PLOT})", ""]
    return "\n".join(lines)


def write_report(out: Path, result: dict, status: str, plotted: list[str]) -> None:
    """DIR/finetune.md and DIR/finetune.png (loss and the `plotted` flat metrics per epoch)."""
    text = markdown_report(result, status)
    save_atomically(out / REPORT, lambda handle: handle.write(text.encode("utf-8")))
    plot_epochs(out / PLOT, result, plotted)


def plot_epochs(path: Path, result: dict, plotted: list[str]) -> Path:
    """Two panels: training loss per epoch; the chosen metrics per evaluated epoch (epoch 0 = before training)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), dpi=100)
    loss_axes, metric_axes = figure.subplots(1, 2)
    epochs = result["epochs"]
    loss_axes.plot([e["epoch"] for e in epochs], [e["loss"] for e in epochs], marker="o")
    loss_axes.set(title="training loss", xlabel="epoch", ylabel="mean loss")
    for name in plotted:
        points = [(0, flat_metrics(result["before"]).get(name))]
        points += [(e["epoch"], flat_metrics(e).get(name)) for e in epochs]
        points = [(x, y) for x, y in points if y is not None]
        if points:
            metric_axes.plot(*zip(*points), marker="o", label=name)
    metric_axes.set(title="evaluation", xlabel="epoch (0 = before)")
    if plotted:
        metric_axes.legend(fontsize=8)
    figure.suptitle(f"{result['task']}: {result['base_model']['name']}")
    figure.tight_layout()
    save_atomically(path, lambda handle: figure.savefig(handle, format="png"))
    return path
