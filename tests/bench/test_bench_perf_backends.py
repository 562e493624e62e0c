"""`python -m clip_app.bench perf --only backends`: torch, onnx and int8 side by side in one run (tiny checkpoint,
its export reused from the session's cache); no timing is asserted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from clip_app.bench.__main__ import build_parser
from clip_app.bench.perf import app as perf_app
from clip_app.bench.perf.backends import explain, parse_backends, targets
from clip_app.bench.perf.ceiling import image_flops
from clip_app.bench.perf.stats import Results

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_backends_side_by_side(onnx_exports: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[list[str]] = []

    def cold_start(checkpoint, photo, folder, timeout=300.0, extra_args=()):
        # app.py in a subprocess takes tens of seconds on a busy machine: test_bench_perf times the real one;
        # here: that every backend's app is started with its own flags
        started.append(list(extra_args))
        return {"ready": 1.0, "server": 1.5, "first_answer": 2.0 + 0.5 * len(started)}

    monkeypatch.setattr(perf_app, "cold_start", cold_start)
    work = tmp_path / "work"
    shutil.copytree(onnx_exports["model_dir"], work / "models")  # the export is cached: no export in this test
    out = tmp_path / "perf.json"
    parser, modules = build_parser()
    args = parser.parse_args(["perf", "--quick", "--model", str(onnx_exports["vit"]["checkpoint"]), "--only",
                              "backends", "--backends", "onnx,int8", "--repeats", "1", "--workdir", str(work),
                              "--json", str(out)])
    assert modules["perf"].run(args) == 0
    data = json.loads(out.read_text())
    figures = data["figures"]
    for name in ("torch", "onnx", "onnx_int8"):
        for key in ("forward.image.1", "forward.image.4", "text_query", "index_add", "index_add.vs_forward",
                    "index_add.share", "classify", "cold_start"):
            assert all(v > 0 for v in figures[f"backends.{name}.{key}"]["values"]), (name, key)
        if name != "torch":
            for key in ("forward.image.4.ratio", "text_query.ratio", "index_add.ratio", "classify.ratio",
                        "export"):
                assert figures[f"backends.{name}.{key}"]["median"] > 0, (name, key)
            assert f"backends.{name}.cold_start.extra" in figures
    assert [flags[:4] for flags in started] == [["--backend", "torch", "--precision", "fp32"],
                                                ["--backend", "onnx", "--precision", "fp32"],
                                                ["--backend", "onnx", "--precision", "int8"]]
    assert all(flags[4:] == ["--model-dir", str(work / "models")] for flags in started)
    assert figures["backends.onnx.cold_start.extra"]["values"] == [0.5]
    assert data["facts"]["backends.onnx.engine"].startswith("onnx (ONNX Runtime fp32")
    assert data["facts"]["backends.onnx_int8.engine"].startswith("onnx (ONNX Runtime int8")
    targets = {t["key"]: t for t in data["targets"]}
    for key in ("backends.onnx.forward.image.4.ratio", "backends.onnx.text_query.ratio",
                "backends.onnx.index_add.ratio", "backends.onnx.index_add.vs_forward",
                "backends.onnx.classify.ratio", "backends.onnx.cold_start.extra"):
        assert isinstance(targets[key]["met"], bool), key
    assert figures["backends.ceiling.forward_floor"]["median"] > 0
    assert figures["backends.ceiling.best_ratio"]["median"] > 0
    assert data["facts"]["backends.ceiling.torch_matmul_gflops"] > 0
    assert data["facts"]["backends.ceiling.onnx_matmul_gflops"] > 0
    for name in ("torch", "onnx", "onnx_int8"):
        assert figures[f"backends.{name}.forward.image.4.gflops"]["median"] > 0
    table = capsys.readouterr().out
    assert "backends.onnx.forward.image.4.ratio" in table or "onnx / torch" in table


def test_backend_names_are_checked() -> None:
    assert parse_backends("onnx,int8,onnx") == ["torch", "onnx", "int8"]
    with pytest.raises(ValueError, match="unknown tensorrt"):
        parse_backends("tensorrt")


def test_image_flops_counts_the_towers_products() -> None:
    import clip.model
    import torch

    torch.manual_seed(0)
    # ViT: patch size 16 on 32 px = 4 patches + class token, width 64, 2 layers, output 32
    model = clip.model.CLIP(32, 32, 2, 64, 16, 77, 1000, 64, 2, 1).float().eval()
    tokens, width = 5, 64
    per_layer = 2 * tokens * width * width * (3 + 1 + 8) + 2 * 2 * tokens * tokens * width  # qkv, out, mlp, attention
    expected = 2 * 4 * 3 * 16 * 16 * width + 2 * per_layer + 2 * width * 32  # patches, layers, projection
    assert image_flops(model, 32) == pytest.approx(expected, rel=0.02)


def test_targets_say_when_the_fp32_ceiling_puts_them_out_of_reach() -> None:
    results = Results()
    results.add("backends.ceiling.best_ratio", "floor", "x", [0.8])
    checks = targets(32)
    explain(checks, results)
    notes = {t.key: t.note for t in checks}
    assert "out of reach in fp32" in notes["backends.onnx.forward.image.32.ratio"]
    assert "1.25x" in notes["backends.onnx.index_add.ratio"]
    assert notes["backends.onnx.classify.ratio"] == ""
    reachable = Results()
    reachable.add("backends.ceiling.best_ratio", "floor", "x", [0.4])
    checks = targets(32)
    explain(checks, reachable)
    assert all(t.note == "" for t in checks)
