"""Bulk indexing on Ray: the same rows and reports as the serial add, resumable, clear errors; a two-node cluster."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import torch

from clip_app.config import Settings
from clip_app.library import FeatureLibrary
from clip_app.library.ray_ingest import RayIngestError, RayOptions, check_address, connect, ray_add
from tests.support.library_helpers import image_bytes, write_image
from tests.support.pg_server import free_port

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray cluster with 2 CPUs for this module; shut down after it."""
    from clip_app.library.ray_ingest import init_kwargs

    ray.init(num_cpus=2, **init_kwargs())
    yield ray
    ray.shutdown()


def _folder(root: Path) -> list[Path]:
    """Seven images (one repeated under another name), a broken file and a file already in the library."""
    for i in range(7):
        write_image(root / f"img{i}.png", (30 * i + 10, 200 - 25 * i, 90), size=(40 + i, 32))
    (root / "copy_of_img2.png").write_bytes((root / "img2.png").read_bytes())
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    write_image(root / "known.png", "red")
    return sorted(root.iterdir())


def test_ray_add_matches_the_serial_add(local_ray, tmp_path: Path, tiny_checkpoint: Path, tiny_encoder,
                                        pg_url: str) -> None:
    files = _folder(tmp_path / "in")
    serial = FeatureLibrary(tmp_path / "g1", tmp_path / "lib.pth", tiny_encoder)
    parallel = FeatureLibrary(tmp_path / "g2", pg_url, tiny_encoder)
    for library in (serial, parallel):
        library.add([(image_bytes("red"), "known.png")])
    expected = serial.add(files)
    settings = Settings(model=str(tiny_checkpoint), device="cpu")
    got = ray_add(parallel, settings, files, RayOptions(address="auto", actors=2, batch_size=3))
    strip = [(r.name, r.status, r.id, r.error) for r in expected.results]
    assert [(r.name, r.status, r.id, r.error) for r in got.results] == strip
    for want, have in zip(expected.results, got.results):  # the tiny random model puts many images near 0.97
        close_call = any(sim is not None and abs(sim - serial.near_duplicate_threshold) < 5e-3
                         for sim in (want.similarity, have.similarity))
        if not close_call:
            assert have.near_duplicate_of == want.near_duplicate_of, (want, have)
    assert [r.status for r in got.results].count("added") == 7
    assert expected.summary().split(",")[:2] == got.summary().split(",")[:2]  # added, duplicates
    ids_a, rows_a = serial.snapshot()
    ids_b, rows_b = parallel.snapshot()
    assert ids_a.tolist() == ids_b.tolist()
    assert torch.allclose(rows_a, rows_b, atol=2e-3)  # float16 rows; batches of another size may round apart
    assert [e.sha256 for e in serial] == [e.sha256 for e in parallel] and parallel.check().ok
    run = got.ray  # the start-up (actors up, model loaded) apart from the rest, and the writer's own time
    assert 0 < run.model_load_s <= run.startup_s < run.seconds and 0 < run.write_s < run.seconds
    assert run.steady_images <= 10 and "start-up" in run.summary()
    again = ray_add(parallel, settings, files, RayOptions(address="auto", actors=1, batch_size=4))
    assert [r.status for r in again.results].count("duplicate") == 9  # resumable: every stored image is skipped


def test_an_address_that_does_not_answer_is_clear_and_fast() -> None:
    started = time.monotonic()
    with pytest.raises(RayIngestError, match="does not answer"):
        check_address(f"127.0.0.1:{free_port()}")
    with pytest.raises(RayIngestError, match="HOST:PORT"):
        connect("nonsense")
    assert time.monotonic() - started < 5


def _ray_cli(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).parent / "ray"), *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _kill_leftovers(temp: str) -> None:
    """Kill any process of our Ray nodes still running (by PID; they are found by their --temp-dir)."""
    import psutil

    for process in psutil.process_iter(["pid", "cmdline"]):
        if any(temp in part for part in (process.info["cmdline"] or [])):
            try:
                process.kill()
            except psutil.Error:
                pass


def test_two_nodes_index_through_the_cli(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """A head and a second node started with `ray start` on this machine (bounded; both stopped at the end)."""
    if ray.is_initialized():
        ray.shutdown()
    port = free_port()
    # Ray >= 2.59 authenticates with a token: every node and the driver get the same one (as on a real cluster)
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex * 2)
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    head = _ray_cli("start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false", "--block",
                    f"--temp-dir={temp}", env=env)
    worker = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                check_address(f"127.0.0.1:{port}")
                break
            except RayIngestError:
                assert time.monotonic() < deadline and head.poll() is None, "the Ray head did not start"
                time.sleep(0.5)
        worker = _ray_cli("start", f"--address=127.0.0.1:{port}", "--num-cpus=1", "--block", env=env)
        files = _folder(tmp_path / "in")
        command = [sys.executable, "-m", "clip_app.index", "--model", str(tiny_checkpoint), "--device", "cpu",
                   "--gallery", str(tmp_path / "g"), "--library", str(tmp_path / "lib.pth"), "add", "--ray",
                   f"127.0.0.1:{port}", "--ray-actors", "2", *map(str, files)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=Path(__file__).parents[2],
                              env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "8 added, 1 duplicate" in done.stdout and "failed: " in done.stdout and "broken.jpg" in done.stdout
        assert "with 2 actors on 2 nodes (2 CPUs" in done.stderr
    finally:
        for process in (worker, head):  # SIGKILL: a SIGTERM'd node drains for up to 30 s
            if process is not None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)
        _kill_leftovers(temp)
        shutil.rmtree(temp, ignore_errors=True)
