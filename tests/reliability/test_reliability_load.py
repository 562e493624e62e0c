"""Fifty searches at once through gradio_client against the running app: every answer is right (the colour model
makes the right answer known), and the latency percentiles are printed (run with -s to see them)."""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Iterator

import numpy as np
import pytest
from gradio_client import Client

from tests.support.app_helpers import free_port
from tests.support.fakes import COLOUR_NAMES
from tests.support.reliability_helpers import PRELOAD, serve_colour_app
from tests.support.threads import run_in_threads

SEARCHES = 50


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, int]]]:
    """The app in its own process (so the clients' threads do not share its interpreter), one image per colour."""
    root = tmp_path_factory.mktemp("load")
    port = free_port()
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    ready = context.Queue()
    child = context.Process(target=serve_colour_app, args=(str(root / "lib"), port, COLOUR_NAMES, ready), daemon=True)
    child.start()
    try:
        yield f"http://127.0.0.1:{port}/", ready.get(timeout=180)
    finally:
        child.terminate()
        child.join(30)


def test_fifty_concurrent_searches_all_answer_correctly(server) -> None:
    url, id_of = server
    client = Client(url, verbose=False, analytics_enabled=False, download_files=False)
    client.predict("warm-up", 1, api_name="/search")
    barrier = threading.Barrier(SEARCHES)
    latencies: list[float] = []
    wrong: list[tuple[str, str]] = []

    def search(n: int) -> None:
        colour = COLOUR_NAMES[n % len(COLOUR_NAMES)]
        barrier.wait(timeout=60)
        start = time.perf_counter()
        gallery, message = client.predict(f"a photo of something {colour}", 3, api_name="/search")
        latencies.append(time.perf_counter() - start)
        if not gallery[0]["caption"].startswith(f"#{id_of[colour]} · ") or len(gallery) != 3:
            wrong.append((colour, gallery[0]["caption"]))
        if message != f"3 of {len(id_of)} images shown.":
            wrong.append((colour, message))

    started = time.perf_counter()
    errors = run_in_threads(search, [(n,) for n in range(SEARCHES)], timeout=300)
    wall = time.perf_counter() - started
    assert not errors, errors[:3]
    assert not wrong, wrong
    assert len(latencies) == SEARCHES
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    print(f"\n{SEARCHES} concurrent searches in {wall:.2f} s: latency min {min(latencies):.3f} s, p50 {p50:.3f} s, "
          f"p90 {p90:.3f} s, p99 {p99:.3f} s, max {max(latencies):.3f} s")
    assert p99 < 120  # generous: only a hang or a serialised crawl fails this on a busy 2-core machine
