"""The app's cold start: `python app.py --model <checkpoint>` in a fresh process until the server answers its
first /classify through gradio_client, with the time to the app's 'ready' log line and to the server's first
answer on the way."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from .stats import Results, rss_bytes

log = logging.getLogger(__name__)

READY_MARK = "clip-app ready"  # App.from_settings logs it once the model and the library are loaded


def app_script() -> Path | None:
    """app.py of this checkout (next to the clip_app package), or None in a build without the app."""
    path = Path(__file__).resolve().parents[3] / "app.py"
    return path if path.is_file() else None


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cold_start(checkpoint: str | Path, photo: Path, folder: Path, timeout: float = 300.0,
               extra_args: Sequence[str] = ()) -> dict[str, float]:
    """Seconds from process start to: the 'ready' log line, the server's first answer, the first /classify
    (extra_args: more flags of app.py, e.g. --backend onnx or --text-model)."""
    from gradio_client import Client, handle_file

    script = app_script()
    if script is None:
        raise RuntimeError("app.py is not in this build")
    shutil.rmtree(folder, ignore_errors=True)  # an empty library: a kept --workdir holds the last run's
    folder.mkdir(parents=True)
    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost", PYTHONUNBUFFERED="1")
    command = [sys.executable, str(script), "--model", str(checkpoint), "--device", "cpu", "--gallery",
               str(folder / "gallery"), "--library", str(folder / "features_library.pth"), "--port", str(port),
               *extra_args]
    marks: dict[str, float] = {}
    lines: list[str] = []
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               cwd=str(script.parent))

    def read_output() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if READY_MARK in line and "ready" not in marks:
                marks["ready"] = time.perf_counter() - start

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        client = None
        while client is None:
            if process.poll() is not None:
                raise RuntimeError(f"app.py exited with {process.returncode}: {''.join(lines)[-2000:]}")
            if time.perf_counter() - start > timeout:
                raise TimeoutError(f"app.py did not answer within {timeout:.0f} s: {''.join(lines)[-2000:]}")
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            except Exception:  # not listening yet
                time.sleep(0.1)
        marks["server"] = time.perf_counter() - start
        client.predict(handle_file(str(photo)), "dog, cat, car", "single", False, 0.25, False, api_name="/classify")
        marks["first_answer"] = time.perf_counter() - start
        marks["rss_mb"] = rss_bytes(process.pid) / 2**20  # the app's resident memory once it has answered
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=5)
    return marks


def measure_cold_start(checkpoint: str | Path, photo: Path, repeats: int, results: Results, workdir: Path) -> None:
    """app.cold_start.* figures (each repeat a fresh process and a fresh, empty library)."""
    if app_script() is None:
        results.pending["app"] = "app.py (a checkout's launcher) is not here: cold start not timed"
        return
    runs: list[dict[str, float]] = [cold_start(checkpoint, photo, workdir / f"cold-{r}") for r in range(repeats)]
    _add(results, runs, "ready", "app cold start: process start -> model and library loaded")
    _add(results, runs, "server", "app cold start: -> server answers")
    _add(results, runs, "first_answer", "app cold start: -> first /classify answered (gradio_client)")
    values = [run["rss_mb"] for run in runs if run.get("rss_mb")]
    if values:
        results.add("app.rss_mb", "  the app's resident memory after its first answer", "MB", values)


def _add(results: Results, runs: Sequence[dict[str, float]], mark: str, label: str) -> None:
    values = [run[mark] for run in runs if mark in run]
    if values:
        results.add(f"app.cold_start.{mark}", label, "s", values)
