"""`python -m clip_app.finetune retrieval`: CLIP's contrastive fine-tuning on Flickr8k-style image-caption pairs.

Trains on the `train` split (every caption of an image is a pair), evaluates R@1/5/10 both ways on --eval-split
(test by default) with the Flickr8k benchmark's own code, keeps the model with the best mean R@5.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Callable

import clip
import torch

from ..bench.features import encode_image_files
from ..bench.flickr8k.cli import TEXT_CHUNK
from ..bench.flickr8k.data import Flickr8k
from ..bench.flickr8k.metrics import retrieval_metrics
from ..bench.timing import StageTimer
from ..encoders import ClipEncoder, encode_text_trimmed
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
from .data import ImageItems, check_pairs, read_split, unreadable_images, without_images
from .loop import LoopState
from .objectives import clip_loss
from .optim import param_groups
from .outputs import MODEL, prepare_out, save_clip_model

log = logging.getLogger(__name__)

FREEZE = ("none", "visual", "text")
PLOTTED = ["text_to_image R@1", "text_to_image R@5", "image_to_text R@1", "image_to_text R@5"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `python -m clip_app.finetune retrieval`."""
    parser.add_argument("--data", required=True, help="the Flickr8k folder (original, Kaggle or captions.json layout)")
    add_common_arguments(parser, epochs=5, batch_size=128, weight_decay=0.2, warmup=100)
    parser.add_argument("--freeze", choices=FREEZE, default="none",
                        help="keep a tower fixed: visual (train the text side) or text (LiT: train the image side)")
    parser.add_argument("--eval-split", default="test", choices=("test", "dev"),
                        help="the split evaluated before, during and after training, and used to pick the best "
                             "epoch [test]")


def encode_captions(encoder: ClipEncoder, captions: list[str]) -> torch.Tensor:
    """Caption features [T, D] in the benchmark's chunks (same calls, same numbers)."""
    rows = [encoder.encode_texts(captions[i:i + TEXT_CHUNK]) for i in range(0, len(captions), TEXT_CHUNK)]
    return torch.cat(rows) if rows else torch.empty(0, encoder.dim)


def evaluate_encoder(encoder: ClipEncoder, data: Flickr8k, batch_size: int, workers: int, progress: bool) -> dict:
    """R@1/5/10 and median rank both ways, as `python -m clip_app.bench flickr8k` computes them (prefix '')."""
    images = encode_image_files(encoder, data.image_paths, batch_size=batch_size, workers=workers,
                                desc=f"evaluating on {data.split}", progress=progress)
    texts = encode_captions(encoder, list(data.captions))
    metrics = retrieval_metrics(images, texts, torch.tensor(data.caption_image, dtype=torch.long))
    metrics["mean_R@5"] = (metrics["text_to_image"]["R@5"] + metrics["image_to_text"]["R@5"]) / 2
    return metrics


def freeze(model: torch.nn.Module, which: str) -> None:
    """Stop gradients into one tower: 'visual' (model.visual) or 'text' (everything else but the logit scale)."""
    for name, parameter in model.named_parameters():
        visual = name.startswith("visual.")
        if (which == "visual" and visual) or (which == "text" and not visual and name != "logit_scale"):
            parameter.requires_grad_(False)


class RetrievalTask:
    """The whole CLIP model trained with the symmetric contrastive loss on (image, caption) pairs."""

    def __init__(self, base: ClipEncoder, train_data: Flickr8k, eval_data: Flickr8k, args: argparse.Namespace) -> None:
        self.base, self.eval_data, self.args = base, eval_data, args
        self.device = base.device
        self.model = base.model.float().to(self.device)  # fp32 master weights (a GPU load is fp16)
        self.preprocess = base.preprocess
        self.frozen = args.freeze
        freeze(self.model, self.frozen)
        self.tokens = clip.tokenize(list(train_data.captions), truncate=True)  # [T, 77]
        paths = train_data.image_paths
        self.items = ImageItems([paths[i] for i in train_data.caption_image], list(range(train_data.n_captions)),
                                self.preprocess, base.input_resolution, augment=args.augment, seed=args.seed)

    def param_groups(self) -> list[dict]:
        return param_groups(self.model.named_parameters(), self.args.lr, self.args.weight_decay)

    def loss(self, pixels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Contrastive loss of a batch: pixels [B, 3, S, S], caption indices [B] -> scalar."""
        with torch.set_grad_enabled(self.frozen != "visual"):
            images = self.model.encode_image(pixels)
        with torch.set_grad_enabled(self.frozen != "text"):
            texts = encode_text_trimmed(self.model, self.tokens[targets.cpu()].to(self.device))
        return clip_loss(images, texts, self.model.logit_scale)

    def evaluate(self) -> dict:
        encoder = ClipEncoder.from_model(self.model, self.preprocess, name=self.base.name, identity="training",
                                         device=self.device, batch_size=self.args.eval_batch_size)
        try:
            return evaluate_encoder(encoder, self.eval_data, self.args.eval_batch_size, self.args.workers,
                                    not self.args.no_progress)
        finally:
            self.model.train()

    def score(self, metrics: dict) -> float:
        return float(metrics["mean_R@5"])

    def save_model(self, path: Path) -> None:
        """The CLIP state dict as OpenAI's checkpoints hold it: `--model path` loads it everywhere."""
        save_clip_model(path, self.model.state_dict())


def _prepare_data(args: argparse.Namespace, min_side: int) -> tuple[Flickr8k, Flickr8k, dict[str, str]]:
    train_data = read_split(args.data, "train")
    eval_data = read_split(args.data, args.eval_split)
    check_pairs(train_data, args.batch_size, args.accumulate)
    paths = list(dict.fromkeys([*train_data.image_paths, *eval_data.image_paths]))
    bad = unreadable_images(paths, workers=args.workers, min_side=min_side, progress=not args.no_progress)
    train_data, eval_data = without_images(train_data, bad), without_images(eval_data, bad)
    check_pairs(train_data, args.batch_size, args.accumulate)
    return train_data, eval_data, bad


def run(args: argparse.Namespace, step_hook: Callable[[LoopState], None] | None = None) -> Outcome:
    """Fine-tune for retrieval; FinetuneError for bad input. Writes everything into --out."""
    started = time.perf_counter()
    out = Path(args.out)
    prepare_out(out, args.resume, args.overwrite)
    timer = StageTimer()
    settings = settings_of(args)
    with timer.stage("load_model"):
        base = load_base(settings, args.eval_batch_size)
    with timer.stage("read_data"):
        train_data, eval_data, bad = _prepare_data(args, base.decode_min_side)
    hyper = {**common_hyperparameters(args), "freeze": args.freeze, "eval_split": args.eval_split}
    data = {"root": str(Path(train_data.root).resolve()), "layout": train_data.layout, "train_split": "train",
            "train_images": train_data.n_images, "train_pairs": train_data.n_captions,
            "eval_split": eval_data.split, "eval_images": eval_data.n_images, "eval_captions": eval_data.n_captions,
            "skipped_images": bad}
    fingerprint = {"task": "retrieval", "base_identity": base.identity, "data": data,
                   "hyperparameters": hyper}
    before = None
    if not args.resume:  # the base model as loaded (fp16 on a GPU), exactly as the benchmark evaluates it
        with timer.stage("evaluate_before"):
            before = evaluate_encoder(base, eval_data, args.eval_batch_size, args.workers, not args.no_progress)
    task = RetrievalTask(base, train_data, eval_data, args)
    loop, result = train(task, args, base.device, out, fingerprint, step_hook, before)
    after = None
    if result.status not in ("max_steps", "interrupted"):  # resumable stops have no final model yet
        with timer.stage("evaluate_after"):
            final = load_saved(out / MODEL, base.device, args.eval_batch_size)
            after = evaluate_encoder(final, eval_data, args.eval_batch_size, args.workers, not args.no_progress)
            after["model_identity"] = final.identity
    summary = summary_of("retrieval", settings, base, data, hyper, loop, after, timer.as_dict(), started)
    finish(out, result, summary, PLOTTED)
    return Outcome(result, summary, out)


def headline(summary: dict) -> str:
    """One line: R@1/R@5 both ways, before -> after."""
    before, after = summary["before"], summary["after"]
    if after is None:
        return f"retrieval fine-tuning not finished ({len(summary['epochs'])} epoch(s) done, best so far: epoch " \
               f"{summary['best_epoch']})"
    parts = [f"{d.replace('_', ' ')} R@{k} {before[d][f'R@{k}']:.4f} -> {after[d][f'R@{k}']:.4f}"
             for d in ("text_to_image", "image_to_text") for k in (1, 5)]
    return f"retrieval fine-tuning (best epoch {summary['best_epoch']}): " + ", ".join(parts)
