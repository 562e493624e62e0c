"""ONNX Runtime sessions for CLIP's towers, and the choice of backend (torch or ONNX Runtime).

One session per tower, shared by every thread (InferenceSession.run is thread-safe); intra-op threads = the
physical cores (or CLIP_APP_ONNX_THREADS), inter-op 1.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .onnx_cache import ExportedTowers, find_cached, load_or_export
from .onnx_export import IMAGE_INPUT, TEXT_INPUT

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx")
PRECISIONS = ("fp32", "int8")


def onnxruntime_available() -> bool:
    """True when the onnxruntime package imports."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: str) -> str:
    """'torch' or 'onnx' for a requested backend on a resolved torch device: 'auto' is ONNX Runtime on a CPU when
    onnxruntime is installed, else PyTorch (fp16 on CUDA). Explicit 'onnx' without onnxruntime, or on a GPU, is
    PyTorch with a log line saying why. ValueError for an unknown name."""
    backend = (backend or "auto").strip().lower()
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return "torch"
    if device != "cpu":
        if backend == "onnx":
            log.warning("the ONNX Runtime backend runs on the CPU; on %s the PyTorch backend is used "
                        "(pass --device cpu to use ONNX Runtime)", device)
        return "torch"
    if not onnxruntime_available():
        log.warning("onnxruntime is not installed: using the PyTorch backend (pip install onnxruntime for the "
                    "faster CPU backend)")
        return "torch"
    return "onnx"


def physical_cores() -> int:
    """Physical CPU cores this process may use (hyper-threads counted once); at least 1."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    try:
        for cpu in allowed:
            topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
            cores.add(((topology / "physical_package_id").read_text().strip(),
                       (topology / "core_id").read_text().strip()))
    except OSError:
        return max(1, len(allowed))
    return max(1, len(cores))


def default_threads() -> int:
    """Intra-op threads: CLIP_APP_ONNX_THREADS when set, else the physical cores."""
    raw = os.environ.get("CLIP_APP_ONNX_THREADS", "").strip()
    if raw:
        try:
            return max(1, int(raw))
        except ValueError:
            log.warning("CLIP_APP_ONNX_THREADS=%r is not a whole number: using the physical cores", raw)
    return physical_cores()


def open_session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session for one tower file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxTowers:
    """Both towers as ONNX Runtime sessions: unnormalised float32 features, like the model's own encoders."""

    def __init__(self, exported: ExportedTowers, precision: str, threads: int | None = None) -> None:
        self.exported = exported
        self.precision = precision
        self.threads = threads or default_threads()
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:  # the two towers' graphs are loaded and optimised side by side
            image, text = pool.map(lambda path: open_session(path, self.threads), (exported.image, exported.text))
        self.image_session, self.text_session = image, text

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels [N, 3, H, W] -> features [N, D] float32 (not normalised)."""
        array = np.ascontiguousarray(pixels.detach().cpu().float().numpy())
        return torch.from_numpy(self.image_session.run(None, {IMAGE_INPUT: array})[0])

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens [N, L] (trimmed to the longest text) -> features [N, D] float32 (not normalised)."""
        array = np.ascontiguousarray(tokens.detach().cpu().to(torch.int64).numpy())
        return torch.from_numpy(self.text_session.run(None, {TEXT_INPUT: array})[0])


def open_cached(identity: str, model_dir: Path, precision: str, threads: int | None = None) -> OnnxTowers | None:
    """ONNX Runtime towers straight from an intact cached export (no PyTorch weights needed), else None."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    try:
        exported = find_cached(model_dir, identity, precision)
        return OnnxTowers(exported, precision, threads) if exported is not None else None
    except Exception as exc:  # an unreadable folder, a session that fails: the full path decides (and logs)
        log.debug("no usable cached ONNX export for %s: %s", identity, exc)
        return None


def start_onnx(model: torch.nn.Module, identity: str, model_dir: Path, precision: str,
               preprocess: Callable[[Image.Image], torch.Tensor], tokenize: Callable[..., torch.Tensor],
               resolution: int, threads: int | None = None) -> OnnxTowers | None:
    """ONNX Runtime towers for a loaded float32 CPU model (exported and verified once, then cached), or None
    with a log line saying why when they cannot be had (the caller keeps PyTorch)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    threads = threads or default_threads()
    try:
        exported = load_or_export(model, identity, model_dir, precision, preprocess, tokenize, resolution,
                                  lambda path: open_session(path, threads))
        return OnnxTowers(exported, precision, threads)
    except Exception as exc:  # export, verification, a write, a session: never worse than PyTorch
        log.warning("ONNX Runtime backend unavailable for %s (%s): using the PyTorch backend", identity, exc)
        return None
