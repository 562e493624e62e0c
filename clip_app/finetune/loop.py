"""The training loop shared by both tasks: epochs of shuffled batches, gradient accumulation, mixed precision on
CUDA, the cosine schedule, evaluation every N epochs with the best model kept, early stopping, Ctrl-C and resume.

Resume is exact: shuffles and crops are functions of (seed, epoch, index), the schedule a function of the step, and
the checkpoint holds the model, AdamW's state, the scaler and the counters, taken between optimizer steps.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data import ImageItems, collate, epoch_batches
from .errors import FinetuneError
from .objectives import clamp_logit_scale
from .optim import build_optimizer, lr_factor, set_lr
from .outputs import CHECKPOINT, MODEL, load_checkpoint, save_tensors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopConfig:
    """How to train: the command line's shared flags."""

    epochs: int
    batch_size: int
    warmup: int
    accumulate: int
    eval_every: int
    seed: int
    device: str
    patience: int | None = None
    max_steps: int | None = None
    workers: int = 0
    progress: bool = True


class Task(Protocol):
    """What the loop trains: a model, its items, a loss over a batch, an evaluation and how to save the model."""

    model: torch.nn.Module  #: the trained module (its state dict is checkpointed)
    items: ImageItems  #: the training items (images with a target: a caption or a class)

    def param_groups(self) -> list[dict]: ...

    def loss(self, pixels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def evaluate(self) -> dict: ...

    def score(self, metrics: dict) -> float: ...

    def save_model(self, path: Path) -> None: ...


@dataclass
class LoopState:
    """The counters a checkpoint holds besides the weights."""

    epoch: int = 0  # completed epochs
    batch: int = 0  # batches done in the current epoch
    step: int = 0  # optimizer steps done
    loss_sum: float = 0.0  # over this epoch's steps
    history: list[dict] = field(default_factory=list)
    before: dict = field(default_factory=dict)
    best_score: float = -math.inf
    best_epoch: int = 0
    stale: int = 0  # evaluations without improvement
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    items_trained: int = 0
    skipped: int = 0  # training items that failed to decode during training (the pre-check missed them)


@dataclass
class LoopResult:
    state: LoopState
    status: str  # finished, early_stop, interrupted, max_steps, nan
    message: str = ""


@contextlib.contextmanager
def _deferred_sigint() -> Iterator[None]:
    """Hold Ctrl-C back while the weights and the optimizer change together; raise it right after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda *args: caught.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


class Loop:
    """Train `task` with `config`; checkpoints and the best model go to `out`."""

    def __init__(self, task: Task, config: LoopConfig, out: Path, fingerprint: dict,
                 step_hook: Callable[[LoopState], None] | None = None) -> None:
        self.task, self.config, self.out, self.fingerprint = task, config, Path(out), fingerprint
        self.step_hook = step_hook
        self.cuda = config.device.startswith("cuda")
        self.n_items = len(task.items)
        per_step = config.batch_size * config.accumulate
        if self.n_items < per_step:
            raise FinetuneError(f"{self.n_items} training items are fewer than one optimizer step needs ({per_step} "
                                f"= --batch-size {config.batch_size} x --accumulate {config.accumulate})")
        self.steps_per_epoch = self.n_items // per_step
        self.batches_per_epoch = self.steps_per_epoch * config.accumulate
        self.total_steps = self.steps_per_epoch * config.epochs
        self.optimizer = build_optimizer(task.param_groups())
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.cuda)
        self.state = LoopState()

    # ---- checkpoints ----------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """DIR/checkpoint.pt: everything needed to continue exactly where the loop stands."""
        path = self.out / CHECKPOINT
        save_tensors(path, {"model": self.task.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                            "scaler": self.scaler.state_dict(), "state": asdict(self.state),
                            "fingerprint": self.fingerprint})
        return path

    def resume(self) -> None:
        """Load DIR/checkpoint.pt; FinetuneError when it belongs to a different run (data, model or settings)."""
        saved = load_checkpoint(self.out / CHECKPOINT)
        theirs = saved.get("fingerprint", {})
        differ = sorted(k for k in set(theirs) | set(self.fingerprint) if theirs.get(k) != self.fingerprint.get(k))
        if differ:
            details = "; ".join(f"{k}: checkpoint {theirs.get(k)!r}, now {self.fingerprint.get(k)!r}" for k in differ)
            raise FinetuneError(f"--resume: {self.out / CHECKPOINT} was made with other settings ({details}); "
                                "resume with the same flags, or start again with --overwrite")
        self.task.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scaler.load_state_dict(saved["scaler"])
        self.state = LoopState(**saved["state"])
        log.info("resumed at epoch %d, batch %d (step %d)", self.state.epoch + 1, self.state.batch, self.state.step)

    # ---- the loop -------------------------------------------------------------------------------------------
    def evaluate_before(self, metrics: dict | None = None) -> dict:
        """Evaluate the untrained model (the zero point of the best-model choice; `metrics` when measured already)
        and save it as DIR/model.pt."""
        started = time.perf_counter()
        metrics = self.task.evaluate() if metrics is None else metrics
        self.state.before = metrics
        self.state.best_score, self.state.best_epoch = self.task.score(metrics), 0
        self.task.save_model(self.out / MODEL)
        self.state.eval_seconds += time.perf_counter() - started
        return metrics

    def run(self) -> LoopResult:
        """Train until the last epoch, early stopping, Ctrl-C, --max-steps or a NaN loss."""
        try:
            while self.state.epoch < self.config.epochs:
                outcome = self._train_epoch()
                if outcome is not None:
                    return outcome
                if self._end_epoch():
                    return LoopResult(self.state, "early_stop",
                                      f"no improvement in {self.config.patience} evaluation(s)")
        except KeyboardInterrupt:
            path = self.save_checkpoint()
            return LoopResult(self.state, "interrupted", f"interrupted; the state is saved in {path}")
        return LoopResult(self.state, "finished")

    def _loader(self) -> DataLoader:
        state, items = self.state, self.task.items
        items.epoch = state.epoch
        batches = epoch_batches(self.n_items, self.config.batch_size, self.config.seed, state.epoch,
                                self.batches_per_epoch)[state.batch:]
        return DataLoader(items, batch_sampler=batches, num_workers=self.config.workers, collate_fn=collate,
                          pin_memory=self.cuda)

    def _train_epoch(self) -> LoopResult | None:
        state, config, model = self.state, self.config, self.task.model
        model.train()
        started = time.perf_counter()
        bar = tqdm(total=self.batches_per_epoch, initial=state.batch, unit="batch", disable=not config.progress,
                   desc=f"epoch {state.epoch + 1}/{config.epochs}")
        step_loss, micro, pending_items, pending_skipped = 0.0, 0, 0, 0
        try:
            for batch in self._loader():
                if batch is None:  # not one image of the batch could be read
                    pending_skipped += config.batch_size
                    micro += 1
                    bar.update(1)
                else:
                    pixels, targets, indices = batch
                    pending_skipped += config.batch_size - len(indices)
                    with torch.autocast("cuda", dtype=torch.float16, enabled=self.cuda):
                        loss = self.task.loss(pixels.to(config.device, non_blocking=True), targets.to(config.device))
                    if not torch.isfinite(loss):
                        value = float(loss.detach())
                        return LoopResult(state, "nan", f"the loss became {value} at epoch {state.epoch + 1}, "
                                          f"step {state.step + 1}: stopped; {MODEL} holds the best model so far and "
                                          f"{CHECKPOINT} (if any) the last epoch's state. Lower --lr.")
                    self.scaler.scale(loss / config.accumulate).backward()
                    step_loss += float(loss.detach()) / config.accumulate
                    pending_items += len(indices)
                    micro += 1
                    bar.update(1)
                if micro < config.accumulate:
                    continue
                with _deferred_sigint():
                    self._step()
                    state.batch += micro
                    state.step += 1
                    state.loss_sum += step_loss
                    state.items_trained += pending_items
                    state.skipped += pending_skipped
                step_loss, micro, pending_items, pending_skipped = 0.0, 0, 0, 0
                steps_in_epoch = state.batch // config.accumulate
                bar.set_postfix(loss=f"{state.loss_sum / steps_in_epoch:.4f}",
                                lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
                if self.step_hook is not None:
                    self.step_hook(state)
                if config.max_steps is not None and state.step >= config.max_steps:
                    state.train_seconds += time.perf_counter() - started
                    started = time.perf_counter()
                    path = self.save_checkpoint()
                    return LoopResult(state, "max_steps", f"stopped after --max-steps {config.max_steps}; "
                                      f"resume with --resume (state in {path})")
        finally:
            state.train_seconds += time.perf_counter() - started
            bar.close()
        return None

    def _step(self) -> None:
        set_lr(self.optimizer, lr_factor(self.state.step, self.config.warmup, self.total_steps))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        clamp_logit_scale(self.task.model)

    def _end_epoch(self) -> bool:
        """Evaluate when due, keep the best model, checkpoint; True when early stopping says stop."""
        state, config = self.state, self.config
        number = state.epoch + 1
        record: dict = {"epoch": number, "loss": state.loss_sum / max(1, self.steps_per_epoch),
                        "lr": self.optimizer.param_groups[0]["lr"]}
        improved = None
        if number % config.eval_every == 0 or number == config.epochs:
            started = time.perf_counter()
            metrics = self.task.evaluate()
            record.update(metrics)
            score = self.task.score(metrics)
            improved = score > state.best_score
            if improved:
                self.task.save_model(self.out / MODEL)
                state.best_score, state.best_epoch, state.stale = score, number, 0
            else:
                state.stale += 1
            state.eval_seconds += time.perf_counter() - started
            log.info("epoch %d: loss %.4f, score %.4f%s", number, record["loss"], score, " (best)" if improved else "")
        with _deferred_sigint():
            state.history.append(record)
            state.epoch, state.batch, state.loss_sum = number, 0, 0.0
        if number < config.epochs:
            self.save_checkpoint()
        return improved is False and config.patience is not None and state.stale >= config.patience
