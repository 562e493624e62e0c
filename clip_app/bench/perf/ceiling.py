"""The fp32 ceiling of this CPU for the image tower: what no fp32 engine can beat, measured in the same run.

A forward pass is mostly matrix products. The work per image is counted from the model itself (FlopCounterMode over
one encode_image), and the CPU's attainable fp32 rate is measured on the tower's own largest product (the MLP's
[B*tokens, W] x [W, 4W]) by PyTorch and by ONNX Runtime, keeping the faster. Work / rate is the shortest fp32 forward
pass per image this machine allows; divided by PyTorch's own time it is the lowest onnx / torch ratio any fp32 engine
could reach here. Keys: backends.ceiling.* and backends.<name>.forward.image.<B>.gflops.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch

from .stats import Results

#: the product timed for the rate: the ViT MLP's first layer at batch 32 and 50 tokens (ResNets get the same shape)
RATE_SHAPE = (32 * 50, 768, 3072)


def image_flops(model: torch.nn.Module, resolution: int) -> float:
    """Floating-point operations (2 per multiply-add) of one image through the model's image tower."""
    from torch.utils.flop_counter import FlopCounterMode

    pixels = torch.randn(1, 3, resolution, resolution, dtype=next(model.parameters()).dtype)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.encode_image(pixels)
    return float(counter.get_total_flops())


def _best_seconds(run, repeats: int) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def torch_rate(shape: Sequence[int] = RATE_SHAPE, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of one PyTorch matrix product of shape (M, K, N) with torch's threads."""
    m, k, n = shape
    a, b = torch.randn(m, k), torch.randn(k, n)
    return 2 * m * k * n / _best_seconds(lambda: torch.mm(a, b), repeats) / 1e9


def onnx_rate(threads: int, shape: Sequence[int] = RATE_SHAPE, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of the same product as one ONNX Runtime MatMul (weights as an initializer, like a model)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = shape
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "rate",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = min(model.ir_version, 10)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((m, k), dtype=np.float32)
    return 2 * m * k * n / _best_seconds(lambda: session.run(None, {"x": x}), repeats) / 1e9


def measure_ceiling(model: torch.nn.Module, resolution: int, names: Sequence[str], batch: int,
                    per_image: dict[str, list[float]], threads: int, results: Results) -> float:
    """Record backends.ceiling.* and each backend's achieved GFLOP/s at batch B; return the lowest onnx/torch ratio
    of image forward passes that fp32 arithmetic allows on this machine (the floor over torch's median)."""
    from .backends import key_of

    flops = image_flops(model, resolution)
    rates = {"torch": torch_rate(), "onnx": onnx_rate(threads)}
    peak = max(rates.values())
    floor = flops / (peak * 1e9)
    results.facts["backends.ceiling.image_gflop"] = round(flops / 1e9, 3)
    results.facts["backends.ceiling.rate_shape"] = list(RATE_SHAPE)
    for engine, rate in rates.items():
        results.facts[f"backends.ceiling.{engine}_matmul_gflops"] = round(rate, 1)
    results.add("backends.ceiling.forward_floor", f"fp32 floor: {flops / 1e9:.2f} GFLOP per image at the best "
                f"measured {peak:.0f} GFLOP/s", "s", [floor])
    for name in names:
        achieved = [flops / seconds / 1e9 for seconds in per_image[name]]
        results.add(f"backends.{key_of(name)}.forward.image.{batch}.gflops",
                    f"  {name}: achieved at batch {batch} (of {peak:.0f} measured fp32 peak)", "GFLOP/s", achieved)
    torch_median = float(np.median(per_image["torch"]))
    best_ratio = floor / torch_median
    results.add("backends.ceiling.best_ratio", "  lowest onnx / torch an fp32 engine could reach here", "x",
                [best_ratio])
    return best_ratio
