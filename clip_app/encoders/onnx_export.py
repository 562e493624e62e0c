"""Export CLIP's two towers to ONNX files (dynamic batch; the text tower also a dynamic sequence length), and
quantise them to int8 on request. No caching here: onnx_cache.py decides when to export and where files live."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path

import torch

from .clip_torch import encode_text_prefix, has_causal_text_tower

log = logging.getLogger(__name__)

#: bump when the exported graphs change: part of the cache key, so old exports are replaced
EXPORT_CODE_VERSION = 1
OPSET = 18
IMAGE_INPUT, IMAGE_OUTPUT = "pixels", "image_features"
TEXT_INPUT, TEXT_OUTPUT = "tokens", "text_features"


class OnnxExportError(RuntimeError):
    """A tower could not be exported, quantised or verified; the caller falls back to PyTorch."""


class ImageTower(torch.nn.Module):
    """CLIP's image tower: pixels [N, 3, H, W] float32 -> unnormalised features [N, D] float32."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels).float()


class TextTower(torch.nn.Module):
    """CLIP's text tower over tokens trimmed to the longest text: [N, L] int64 -> unnormalised features [N, D].

    The end-of-text position of each row is its largest token ID (argmax, computed in the graph), so the caller
    only trims the padding columns; a model without a causal text tower gets the full 77 columns."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.causal = has_causal_text_tower(model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.causal:
            return encode_text_prefix(self.model, tokens).float()
        return self.model.encode_text(tokens).float()


def export_image_tower(model: torch.nn.Module, path: Path, resolution: int) -> None:
    """Write the image tower of a float32 CPU model to path as ONNX, with a dynamic batch axis."""
    pixels = torch.randn(2, 3, resolution, resolution)
    _export(ImageTower(model), (pixels,), path, IMAGE_INPUT, IMAGE_OUTPUT, {0: "batch"})


def export_text_tower(model: torch.nn.Module, path: Path, context_length: int = 77) -> None:
    """Write the text tower of a float32 CPU model to path as ONNX, with dynamic batch and sequence axes."""
    tower = TextTower(model)
    length = 7 if tower.causal else context_length
    tokens = torch.randint(1, 1000, (2, length))
    tokens[:, -1] = 49407  # an end-of-text token, the largest ID
    axes = {0: "batch", 1: "sequence"} if tower.causal else {0: "batch"}
    _export(tower, (tokens,), path, TEXT_INPUT, TEXT_OUTPUT, axes)


def _export(module: torch.nn.Module, args: tuple, path: Path, input_name: str, output_name: str,
            axes: dict[int, str]) -> None:
    """torch.onnx.export (the torch.export-based exporter) of module(*args) to one self-contained file at path."""
    from torch.export import Dim

    module = module.eval()
    dims = {"batch": Dim("batch"), "sequence": Dim("sequence", min=2, max=77)}
    shapes = {input_name: {axis: dims[name] for axis, name in axes.items()}}
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):  # a line per rewritten node at INFO
        logging.getLogger(noisy).setLevel(logging.ERROR)
    chatter = io.StringIO()  # the exporter prints its progress; stdout may carry a command's JSON
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings(), \
                contextlib.redirect_stdout(chatter):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), dynamo=True, input_names=[input_name],
                              output_names=[output_name], dynamic_shapes=shapes, opset_version=OPSET,
                              external_data=False, optimize=True, verbose=False)
    except Exception as exc:  # unsupported operators, a missing `onnx`/`onnxscript` package
        log.debug("exporter output:\n%s", chatter.getvalue())
        raise OnnxExportError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
    log.debug("exporter output:\n%s", chatter.getvalue())


def quantize_int8(source: Path, target: Path) -> None:
    """ONNX Runtime dynamic quantisation (int8 weights of MatMul/Gemm, activations quantised at run time)."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            out = Path(scratch) / target.name
            logging.disable(logging.WARNING)  # the quantiser logs every tensor to the root logger
            try:
                quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8,
                                 op_types_to_quantize=["MatMul", "Gemm"])
            finally:
                logging.disable(logging.NOTSET)
            out.replace(target)
    except Exception as exc:
        raise OnnxExportError(f"int8 quantisation failed: {type(exc).__name__}: {exc}") from exc
