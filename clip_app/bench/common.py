"""What every benchmark shares: the model flags (config.add_settings_arguments) and the each-model loop."""

from __future__ import annotations

import argparse
import gc
from typing import Iterator

import torch

from ..config import Settings, add_settings_arguments
from ..encoders import ClipEncoder, ModelLoadError
from .timing import StageTimer


class ModelUnavailable(Exception):
    """A --model could not be loaded; the message says which and why."""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model (repeatable), --device, --model-dir, --backend, --precision, --onnx-threads, with the defaults and
    environment variables of Settings."""
    add_settings_arguments(parser, library=False, many_models=True)


def bench_settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with --device, --model-dir and the backend flags applied (--model is a list
    here). ValueError for a bad CLIP_APP_* value."""
    return Settings.from_args(argparse.Namespace(
        device=args.device, model_dir=args.model_dir, backend=getattr(args, "backend", None),
        precision=getattr(args, "precision", None), onnx_threads=getattr(args, "onnx_threads", None)))


def each_model(args: argparse.Namespace, batch_size: int) -> Iterator[tuple[ClipEncoder, StageTimer]]:
    """Load every --model (default: the settings' model) in turn: (encoder, timer holding its load_model stage).
    ModelUnavailable when one cannot be loaded; the previous model's memory is freed before the next loads."""
    try:
        settings = bench_settings(args)
    except ValueError as exc:
        raise ModelUnavailable(str(exc)) from exc
    for model in args.model or [settings.model]:
        timer = StageTimer()
        try:
            with timer.stage("load_model"):
                encoder = ClipEncoder(model, batch_size=batch_size,
                                      **settings.encoder_options())  # type: ignore[arg-type]
        except (ModelLoadError, ValueError) as exc:
            raise ModelUnavailable(str(exc)) from exc
        yield encoder, timer
        del encoder
        free_memory()


def free_memory() -> None:
    """Give back what the last model held (Python objects, and the GPU's cache)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
