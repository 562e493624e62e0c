"""What both sub-commands share: their common flags, loading the base model, running the loop, writing the outputs."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..config import Settings
from ..encoders import ClipEncoder, ModelLoadError
from .errors import FinetuneError
from .loop import Loop, LoopConfig, LoopResult, LoopState, Task
from .outputs import CHECKPOINT, write_report, write_result

log = logging.getLogger(__name__)

#: stop reasons after which the run is complete (checkpoint.pt is removed)
COMPLETE = ("finished", "early_stop")
EXIT_CODES = {"finished": 0, "early_stop": 0, "max_steps": 0, "interrupted": 130, "nan": 1}


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def add_common_arguments(parser: argparse.ArgumentParser, *, epochs: int, batch_size: int, weight_decay: float,
                         warmup: int) -> None:
    """The flags both sub-commands take (defaults differ per task)."""
    parser.add_argument("--model", help="base CLIP model: a name or a checkpoint path [env CLIP_APP_MODEL; "
                        "default ViT-B/32]")
    parser.add_argument("--out", required=True, help="folder for model.pt, finetune.json, the report and the plot")
    parser.add_argument("--epochs", type=positive, default=epochs, help=f"passes over the training data [{epochs}]")
    parser.add_argument("--batch-size", type=positive, default=batch_size, help=f"items per batch [{batch_size}]")
    parser.add_argument("--lr", type=positive_float, default=1e-5, help="peak learning rate [1e-5]")
    parser.add_argument("--weight-decay", type=non_negative_float, default=weight_decay,
                        help=f"AdamW weight decay, on weights only [{weight_decay}]")
    parser.add_argument("--warmup", type=non_negative, default=warmup,
                        help=f"optimizer steps of linear warmup before the cosine decay [{warmup}]")
    parser.add_argument("--accumulate", type=positive, default=1, help="batches per optimizer step [1]")
    parser.add_argument("--augment", action="store_true", help="random resized crop and horizontal flip")
    parser.add_argument("--eval-every", type=positive, default=1, help="evaluate every N epochs (and after the last) "
                        "[1]")
    parser.add_argument("--patience", type=positive, default=None,
                        help="stop after N evaluations without improvement [off]")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N [env CLIP_APP_DEVICE; default auto]")
    parser.add_argument("--model-dir", help="where model weights are downloaded [env CLIP_APP_MODEL_DIR]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffles and augmentations [0]")
    parser.add_argument("--workers", type=non_negative, default=2, help="image decoding processes [2]")
    parser.add_argument("--eval-batch-size", type=positive, default=64,
                        help="images per forward pass when evaluating [64, as the benchmarks]")
    parser.add_argument("--max-steps", type=positive, default=None,
                        help="stop after N optimizer steps with a resumable checkpoint (for timing runs) [off]")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt")
    parser.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def settings_of(args: argparse.Namespace) -> Settings:
    """The model name, device and weights folder from the flags and CLIP_APP_* variables."""
    return Settings.from_args(argparse.Namespace(model=args.model, device=args.device, model_dir=args.model_dir))


def load_base(settings: Settings, batch_size: int) -> ClipEncoder:
    """The base model through the product's loader (name or checkpoint path); FinetuneError when it cannot load
    or is not an OpenAI CLIP model (model.pt must be a state dict of that architecture)."""
    from ..encoders.families import parse_model_spec

    try:
        family = parse_model_spec(settings.model).family
    except ModelLoadError as exc:
        raise FinetuneError(str(exc)) from None
    if family != "clip":
        raise FinetuneError(f"fine-tuning works on OpenAI CLIP models (a name such as ViT-B/32 or a checkpoint "
                            f"file), not on {family} models such as {settings.model!r}")
    try:
        return ClipEncoder(settings.model, device=settings.device, download_root=settings.model_dir,
                           batch_size=batch_size)
    except (ModelLoadError, ValueError) as exc:
        raise FinetuneError(str(exc)) from None


def loop_config(args: argparse.Namespace, device: str) -> LoopConfig:
    """LoopConfig from the common flags."""
    return LoopConfig(epochs=args.epochs, batch_size=args.batch_size, warmup=args.warmup, accumulate=args.accumulate,
                      eval_every=args.eval_every, seed=args.seed, device=device, patience=args.patience,
                      max_steps=args.max_steps, workers=args.workers, progress=not args.no_progress)


def common_hyperparameters(args: argparse.Namespace) -> dict:
    """The flags that change what is trained (a resumed run must match them)."""
    return {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
            "warmup": args.warmup, "accumulate": args.accumulate, "augment": bool(args.augment),
            "eval_every": args.eval_every, "patience": args.patience, "seed": args.seed}


@dataclass
class Outcome:
    """What a sub-command returns to __main__: the loop's result, the finetune.json written (or None), the folder."""

    result: LoopResult
    summary: dict | None
    out: Path


def train(task: Task, args: argparse.Namespace, device: str, out: Path, fingerprint: dict,
          step_hook: Callable[[LoopState], None] | None = None, before: dict | None = None) -> tuple[Loop, LoopResult]:
    """Seed, resume or evaluate the untrained model (unless `before` holds its metrics), then run the loop."""
    torch.manual_seed(args.seed)
    loop = Loop(task, loop_config(args, device), out, fingerprint, step_hook=step_hook)
    if args.resume:
        loop.resume()
    else:
        loop.evaluate_before(before)
    return loop, loop.run()


def finish(out: Path, result: LoopResult, summary: dict, plotted: list[str]) -> None:
    """Write finetune.json, the report and the plot; remove checkpoint.pt when the run is complete."""
    write_result(out, summary)
    status = result.status + (f" ({result.message})" if result.message else "")
    write_report(out, summary, status, plotted)
    if result.status in COMPLETE:
        (out / CHECKPOINT).unlink(missing_ok=True)


def summary_of(task: str, settings: Settings, base: ClipEncoder, data: dict, hyper: dict, loop: Loop,
               after: dict | None, stages: dict[str, float], started: float) -> dict:
    """finetune.json of a run: task, base model, data, hyperparameters, before/after, epochs and timings."""
    return {"task": task, "base_model": {"model": settings.model, "name": base.name, "identity": base.identity},
            "data": data, "hyperparameters": hyper, "before": loop.state.before, "after": after,
            "best_epoch": loop.state.best_epoch, "epochs": loop.state.history,
            "timings": timings(loop, stages, started)}


def timings(loop: Loop, stages: dict[str, float], started: float) -> dict[str, float | None]:
    """The timings block of finetune.json: stages, training and evaluation seconds, throughput, total."""
    state = loop.state
    return {**stages, "train": state.train_seconds, "evaluate": state.eval_seconds,
            "items_trained": state.items_trained, "steps": state.step,
            "items_per_second": state.items_trained / state.train_seconds if state.train_seconds else None,
            "total": time.perf_counter() - started}


def load_saved(path: Path, device: str, batch_size: int) -> ClipEncoder:
    """DIR/model.pt through ClipEncoder, exactly as `--model DIR/model.pt` loads it (identity: its sha256)."""
    try:
        return ClipEncoder(str(path), device=device, batch_size=batch_size)
    except ModelLoadError as exc:
        raise FinetuneError(f"the saved {path} does not load as a CLIP model: {exc}") from exc
