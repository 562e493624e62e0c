"""Reads never wait for writers: a writer waiting for the file lock, or a rebuild/repair encoding every image, does
not hold up len(), search() or page(); and what other writers did meanwhile is kept."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import filelock
import pytest

from tests.support.fakes import COLOUR_NAMES
from tests.support.library_helpers import image_bytes, open_library, write_image

PROMPT = 1.0  # seconds: a read that waited for a writer takes several times longer in these tests


def timed(fn, *args):
    start = time.monotonic()
    result = fn(*args)
    return result, time.monotonic() - start


def slow_encoder(monkeypatch: pytest.MonkeyPatch, encoder, seconds: float) -> threading.Event:
    """Make every batch of images take `seconds` longer; the event is set when the first batch starts."""
    original = encoder.encode_pixels
    started = threading.Event()

    def slow(pixels):
        started.set()
        time.sleep(seconds)
        return original(pixels)

    monkeypatch.setattr(encoder, "encode_pixels", slow)
    return started


def test_reads_go_on_while_a_writer_waits_for_the_file_lock(tmp_path: Path, colour_encoder,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    library = open_library(tmp_path, colour_encoder, lock_timeout=30)
    library.add([(image_bytes("red"), "red.png"), (image_bytes("green"), "green.png")])
    query = colour_encoder.encode_texts(["a red thing"])[0]
    encoded = slow_encoder(monkeypatch, colour_encoder, 0.0)

    held, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:  # another process's writer, as the command line would be
        with filelock.FileLock(str(library.library_file) + ".lock"):
            held.set()
            release.wait(6)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    assert held.wait(10)
    added = []
    adder = threading.Thread(target=lambda: added.append(library.add([(image_bytes("blue"), "blue.png")])))
    adder.start()
    assert encoded.wait(10)
    time.sleep(0.3)  # the adder has encoded its image and now waits for the file lock

    count, t_len = timed(len, library)
    hits, t_search = timed(library.search, query, 2)
    page, t_page = timed(library.page, 1)
    waiting = adder.is_alive()
    release.set()
    holder.join()
    adder.join(30)

    assert waiting, "the adder should still have been waiting for the file lock"
    assert (t_len, t_search, t_page) < (PROMPT, PROMPT, PROMPT) and max(t_len, t_search, t_page) < PROMPT
    assert count == 2 and hits[0][0].id == 1 and [e.id for e in page] == [1, 2]
    assert added[0].results[0].status == "added" and len(library) == 3


def test_searches_go_on_during_a_rebuild_and_changes_made_meanwhile_are_kept(tmp_path: Path, colour_encoder,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    library = open_library(tmp_path, colour_encoder, batch_size=2)
    library.add([(image_bytes(c), f"{c}.png") for c in COLOUR_NAMES[:8]])  # IDs 1..8
    query = colour_encoder.encode_texts(["a blue thing"])[0]
    started = slow_encoder(monkeypatch, colour_encoder, 0.5)  # 8 images in batches of 2: >= 2 s of encoding

    reports = []
    rebuilder = threading.Thread(target=lambda: reports.append(library.rebuild()))
    rebuilder.start()
    assert started.wait(10)
    slowest = 0.0
    searches = 0
    while rebuilder.is_alive() and searches < 200:
        hits, elapsed = timed(library.search, query, 3)
        assert hits[0][0].file.startswith("000003")  # blue
        slowest = max(slowest, timed(len, library)[1], elapsed)
        searches += 1
        if searches == 1:  # a writer that comes while the rebuild encodes goes ahead
            library.remove([2])
            library.add([(image_bytes("grey"), "grey.png")])  # ID 9
        time.sleep(0.05)
    rebuilder.join(60)
    assert searches >= 3 and slowest < PROMPT
    assert reports and reports[0].count == 8
    assert [e.id for e in library] == [1, 3, 4, 5, 6, 7, 8, 9]  # the remove and the add made meanwhile are kept
    assert library.check().ok


def test_searches_go_on_during_a_repair_that_indexes_many_files(tmp_path: Path, colour_encoder,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    library = open_library(tmp_path, colour_encoder, batch_size=2)
    library.add([(image_bytes("red"), "red.png")])
    for k, colour in enumerate(COLOUR_NAMES[1:9]):  # files dropped into the gallery without rows
        write_image(tmp_path / "gallery" / f"photo{k}.png", colour)
    query = colour_encoder.encode_texts(["a red thing"])[0]
    started = slow_encoder(monkeypatch, colour_encoder, 0.5)

    reports = []
    repairer = threading.Thread(target=lambda: reports.append(library.repair()))
    repairer.start()
    assert started.wait(10)
    slowest = 0.0
    searches = 0
    while repairer.is_alive() and searches < 200:
        hits, elapsed = timed(library.search, query, 1)
        slowest = max(slowest, elapsed)
        searches += 1
        time.sleep(0.05)
    repairer.join(60)
    assert hits[0][0].id == 1
    assert searches >= 3 and slowest < PROMPT
    assert len(reports[0].indexed) == 8 and len(library) == 9 and library.check().ok
