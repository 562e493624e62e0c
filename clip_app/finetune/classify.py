"""`python -m clip_app.finetune classify`: CLIP's image tower plus a linear head initialised from the zero-shot
text classifier, trained with cross-entropy on DIR/train/<class>/*, measured by top-1 on DIR/val/<class>/*.

Epoch 0 is the zero-shot classifier exactly. After training, WiSE-FT (--wise A) mixes the zero-shot and the
fine-tuned weights of tower and head: (1 - A) * zero-shot + A * fine-tuned. DIR/model.pt and the label set's head
are the mixed weights (A = 1: the fine-tuned ones).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..bench.timing import StageTimer
from ..classify import LOGIT_SCALE, build_classifier
from ..encoders import ClipEncoder
from ..label_heads import LabelHead
from ..label_sets import LabelSetError, LabelSetStore
from ..prompts import templates_for
from .common import (
    Outcome,
    add_common_arguments,
    common_hyperparameters,
    finish,
    load_base,
    load_saved,
    settings_of,
    summary_of,
    train,
)
from .data import ClassFolders, ImageItems, collate, read_class_folders, unreadable_images, without_paths
from .errors import FinetuneError
from .loop import LoopState
from .objectives import LinearHead, VisualClassifier, wise
from .optim import param_groups
from .outputs import HEAD, LABEL_SETS, MODEL, load_checkpoint, prepare_out, save_clip_model, save_tensors

log = logging.getLogger(__name__)

PLOTTED = ["top1"]


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `python -m clip_app.finetune classify`."""
    parser.add_argument("--root", required=True, help="folder with train/<class>/* and val/<class>/* images")
    add_common_arguments(parser, epochs=10, batch_size=32, weight_decay=0.1, warmup=0)
    parser.add_argument("--head-lr", type=float, default=1e-3, help="learning rate of the linear head [1e-3]")
    parser.add_argument("--freeze-visual", action="store_true", help="train the head only (a linear probe)")
    parser.add_argument("--wise", type=_fraction, default=0.5,
                        help="WiSE-FT weight of the fine-tuned model: 0 = zero-shot, 1 = fine-tuned [0.5]")
    parser.add_argument("--template", default="single",
                        help="prompts of the zero-shot head: single, ensemble or a template with {} [single]")
    parser.add_argument("--label-set-name", help="name of the saved label set [<root folder name> (fine-tuned)]")
    parser.add_argument("--label-sets", help="also save the label set with its head into this label sets file (the "
                        "app's is label_sets.json beside the library file)")


def top1(model: VisualClassifier, data: ClassFolders, preprocess: Callable, device: str, batch_size: int,
         workers: int) -> float:
    """Top-1 accuracy of tower + head on a split (images preprocessed as the app does, no augmentation)."""
    items = ImageItems(data.paths, data.targets, preprocess, 0)
    loader = DataLoader(items, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    correct = total = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in loader:
                if batch is None:
                    continue
                pixels, targets, _ = batch
                dtype = next(model.visual.parameters()).dtype
                predicted = model(pixels.to(device, dtype=dtype)).argmax(dim=-1).cpu()
                correct += int((predicted == targets).sum())
                total += len(targets)
    finally:
        model.train(was_training)
    return correct / total if total else float("nan")


class ClassifyTask:
    """Tower + head trained with cross-entropy; two learning rates (tower --lr, head --head-lr)."""

    def __init__(self, base: ClipEncoder, train_data: ClassFolders, val: ClassFolders, classifier: torch.Tensor,
                 args: argparse.Namespace) -> None:
        self.base, self.val, self.args, self.device = base, val, args, base.device
        self.base_state = {k: v.detach().cpu().float().clone() for k, v in base.model.state_dict().items()}
        visual = base.model.visual.float().to(self.device)
        self.model = VisualClassifier(visual, LinearHead(classifier, LOGIT_SCALE).to(self.device))
        self.zero_shot = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        if args.freeze_visual:
            self.model.visual.requires_grad_(False)
        self.items = ImageItems(train_data.paths, train_data.targets, base.preprocess, base.input_resolution,
                                augment=args.augment, seed=args.seed)

    def param_groups(self) -> list[dict]:
        tower = param_groups((("visual." + n, p) for n, p in self.model.visual.named_parameters()), self.args.lr,
                             self.args.weight_decay)
        head = param_groups((("head." + n, p) for n, p in self.model.head.named_parameters()), self.args.head_lr,
                            self.args.weight_decay)
        return tower + head

    def loss(self, pixels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of a batch: pixels [B, 3, S, S], class indices [B] -> scalar."""
        with torch.set_grad_enabled(not self.args.freeze_visual):
            features = self.model.visual(pixels)
        return F.cross_entropy(self.model.head(features).float(), targets)

    def evaluate(self) -> dict:
        return {"top1": top1(self.model, self.val, self.base.preprocess, self.device, self.args.eval_batch_size,
                             self.args.workers)}

    def score(self, metrics: dict) -> float:
        return float(metrics["top1"])

    def clip_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A full CLIP state dict: the base model with the tower of `state` (a VisualClassifier state dict)."""
        full = dict(self.base_state)
        full.update({k: v.detach().cpu() for k, v in state.items() if k.startswith("visual.")})
        return full

    def save_model(self, path: Path) -> None:
        """DIR/model.pt (CLIP with this tower) and DIR/head.pt (the head) of the current weights."""
        state = self.model.state_dict()
        save_clip_model(path, self.clip_state(state))
        save_tensors(path.with_name(HEAD), {k: v.detach().cpu() for k, v in state.items() if k.startswith("head.")})


def _prepare_data(args: argparse.Namespace, min_side: int) -> tuple[ClassFolders, ClassFolders, dict[str, str]]:
    train_data = read_class_folders(args.root, "train")
    val = read_class_folders(args.root, "val", classes=train_data.classes)
    bad = unreadable_images([*train_data.paths, *val.paths], workers=args.workers, min_side=min_side,
                            progress=not args.no_progress)
    return without_paths(train_data, bad), without_paths(val, bad), bad


def _finalize(task: ClassifyTask, out: Path, alpha: float) -> tuple[dict, LabelHead]:
    """Load the best weights, mix them with the zero-shot ones (WiSE-FT), save the mix as model.pt + head.pt, and
    measure both: -> (after metrics, the final head)."""
    best_head = load_checkpoint(out / HEAD)
    best_clip = load_checkpoint(out / MODEL)
    best = {**{k: v for k, v in best_clip.items() if k.startswith("visual.")}, **best_head}
    task.model.load_state_dict(best)
    fine_tuned = task.evaluate()["top1"]
    mixed = wise(task.zero_shot, best, alpha)
    task.model.load_state_dict(mixed)
    if alpha != 1.0:
        task.save_model(out / MODEL)
    final = load_saved(out / MODEL, task.device, task.args.eval_batch_size)  # as --model DIR/model.pt loads it
    check = VisualClassifier(final.model.visual.float(), task.model.head)
    after = {"top1": fine_tuned, "wise": {"alpha": alpha, "top1": top1(check, task.val, final.preprocess,
                                                                        task.device, task.args.eval_batch_size,
                                                                        task.args.workers)},
             "model_identity": final.identity}
    head = task.model.head
    return after, LabelHead(final.identity, head.weight.detach().cpu(), head.bias.detach().cpu(), head.scale)


def save_label_set(out: Path, name: str, labels: list[str], head: LabelHead, extra: str | None) -> list[str]:
    """The label set with its head in DIR/label_sets.json (and in `extra`, e.g. the app's label sets file)."""
    written = []
    for path in [out / LABEL_SETS, *([Path(extra).expanduser()] if extra else [])]:
        try:
            LabelSetStore(path).save(name, labels, head=head)
        except LabelSetError as exc:
            raise FinetuneError(str(exc)) from None
        written.append(str(path))
    return written


def run(args: argparse.Namespace, step_hook: Callable[[LoopState], None] | None = None) -> Outcome:
    """Fine-tune for classification; FinetuneError for bad input. Writes everything into --out."""
    started = time.perf_counter()
    out = Path(args.out)
    prepare_out(out, args.resume, args.overwrite)
    timer = StageTimer()
    settings = settings_of(args)
    try:
        templates = templates_for(args.template)
    except ValueError as exc:
        raise FinetuneError(str(exc)) from None
    with timer.stage("load_model"):
        base = load_base(settings, args.eval_batch_size)
    with timer.stage("read_data"):
        train_data, val, bad = _prepare_data(args, base.decode_min_side)
    with timer.stage("zero_shot_head"):
        classifier = build_classifier(base, train_data.labels, templates)  # [D, C]
    hyper = {**common_hyperparameters(args), "head_lr": args.head_lr, "freeze_visual": bool(args.freeze_visual),
             "wise": args.wise, "template": args.template}
    data = {"root": str(Path(train_data.root).resolve()), "classes": list(train_data.classes),
            "labels": train_data.labels, "train_images": len(train_data.paths), "val_images": len(val.paths),
            "skipped_images": bad}
    fingerprint = {"task": "classify", "base_identity": base.identity, "data": data,
                   "hyperparameters": {k: v for k, v in hyper.items() if k != "wise"}}
    task = ClassifyTask(base, train_data, val, classifier, args)
    loop, result = train(task, args, base.device, out, fingerprint, step_hook)
    after = None
    if result.status not in ("max_steps", "interrupted"):
        with timer.stage("evaluate_after"):
            after, head = _finalize(task, out, args.wise)
            name = args.label_set_name or f"{Path(args.root).resolve().name} (fine-tuned)"
            after["label_sets"] = save_label_set(out, name, train_data.labels, head, args.label_sets)
            after["label_set"] = name
    summary = summary_of("classify", settings, base, data, hyper, loop, after, timer.as_dict(), started)
    finish(out, result, summary, PLOTTED)
    return Outcome(result, summary, out)


def headline(summary: dict) -> str:
    """One line: top-1 before -> after (-> after WiSE-FT)."""
    before, after = summary["before"]["top1"], summary["after"] or {}
    text = f"classification fine-tuning (best epoch {summary['best_epoch']}): val top-1 {before:.4f}"
    if not after:
        text += f"; not finished ({len(summary['epochs'])} epoch(s) done, best so far: epoch {summary['best_epoch']})"
    else:
        wise_ft = after["wise"]
        text += f" -> {after['top1']:.4f} fine-tuned, {wise_ft['top1']:.4f} WiSE-FT (alpha {wise_ft['alpha']})"
    return text
