"""The same library behaviour against both stores: the .pth file + journal, and PostgreSQL + pgvector."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import queue as queue_module
import signal
import time
from pathlib import Path

import pytest
import torch

from clip_app.library import ModelMismatchError, UnknownImageError
from tests.support.fakes import COLOUR_NAMES
from tests.support.library_helpers import image_bytes, other_colour_encoder, write_image
from tests.support.store_helpers import child_add_at, child_hold_write, open_at


@pytest.fixture(params=["file", "postgresql"])
def where(request, tmp_path: Path) -> tuple[Path, str]:
    """(gallery folder, library location) of a fresh library in each store."""
    if request.param == "file":
        return tmp_path / "gallery", str(tmp_path / "features_library.pth")
    return tmp_path / "gallery", request.getfixturevalue("pg_url")


def test_add_duplicate_get_search_and_ids_never_reused(where, colour_encoder) -> None:
    gallery, location = where
    library = open_at(gallery, location, colour_encoder)
    red = image_bytes("red")
    report = library.add([(red, "red.png"), (image_bytes("green"), "green.png"), (red, "again.png"),
                          (image_bytes("blue", "JPEG"), "blue.jpg")])
    assert [(r.status, r.id) for r in report.results] == [("added", 1), ("added", 2), ("duplicate", 1), ("added", 3)]
    assert (gallery / "000001.png").read_bytes() == red
    assert library.find_sha256(hashlib.sha256(red).hexdigest()) == 1
    entry = library.get(3)
    assert entry.file == "000003.jpg" and entry.name == "blue.jpg" and entry.size > 0 and entry.added > 0
    query = colour_encoder.encode_texts(["a photo of something green"])[0]
    hits = library.search(query, 2)
    assert [e.id for e, _ in hits][0] == 2 and hits[0][1] > hits[1][1]
    assert library.remove([3, 2]) == [3, 2] and not (gallery / "000003.jpg").exists()
    with pytest.raises(UnknownImageError):
        library.remove([1, 7])
    assert [e.id for e in library] == [1] and len(library) == 1
    reopened = open_at(gallery, location, colour_encoder)
    assert reopened.add([(image_bytes("yellow"), "y")]).results[0].id == 4  # 2 and 3 are never given again
    assert library.add([(image_bytes("yellow"), "y2")]).results[0].status == "duplicate"  # seen across instances
    assert [e.id for e in library.page(1, 1)] == [1] and [e.id for e in library.page(2, 1)] == [4]
    stats = library.stats()
    assert stats["count"] == 2 and stats["next_id"] == 5 and stats["model"] == colour_encoder.identity
    near = library.add([(image_bytes("yellow", "JPEG", (40, 30)), "y.jpg"), (image_bytes("cyan"), "c.png"),
                        (image_bytes("cyan", "BMP", (10, 10)), "c.bmp")]).results
    assert [(r.near_duplicate_of, r.similarity is not None) for r in near] == [(4, True), (None, False), (6, True)]


def test_same_search_answer_as_the_file_store(where, colour_encoder, tmp_path: Path) -> None:
    gallery, location = where
    library = open_at(gallery, location, colour_encoder)
    library.add([(image_bytes(c), f"{c}.png") for c in COLOUR_NAMES])
    reference = open_at(tmp_path / "g2", tmp_path / "ref.pth", colour_encoder)
    reference.add([(image_bytes(c), f"{c}.png") for c in COLOUR_NAMES])
    for text in ("red", "a cyan or blue thing", "nothing at all"):
        query = colour_encoder.encode_texts([text])[0]
        got = [(e.id, round(s, 6)) for e, s in library.search(query, 5)]
        assert got == [(e.id, round(s, 6)) for e, s in reference.search(query, 5)]


def test_check_and_repair(where, colour_encoder) -> None:
    gallery, location = where
    library = open_at(gallery, location, colour_encoder)
    library.add([(image_bytes(c), f"{c}.png") for c in ("red", "green", "blue")])
    assert library.check().ok
    (gallery / "000002.png").unlink()
    orphan = write_image(gallery / "000004.png", "yellow").read_bytes()
    (gallery / "000003.png").write_bytes(image_bytes("cyan"))
    kinds = sorted((p.kind, p.id) for p in library.check().problems)
    assert kinds == [("hash_mismatch", 3), ("missing_file", 2), ("orphan_file", 4)]
    report = library.repair()
    assert report.dropped == [2] and report.indexed == [4] and report.reencoded == [3]
    assert library.check().ok and (gallery / "000004.png").read_bytes() == orphan
    fresh = open_at(gallery, location, colour_encoder)
    assert [e.id for e in fresh] == [1, 3, 4] and fresh.check().ok
    cyan = colour_encoder.encode_texts(["cyan"])[0]
    assert fresh.search(cyan, 1)[0][0].id == 3
    assert fresh.add([(image_bytes("white"), "w")]).results[0].id == 5


def test_model_mismatch_is_refused_and_nothing_written(where, colour_encoder) -> None:
    gallery, location = where
    open_at(gallery, location, colour_encoder).add([(image_bytes("red"), "r.png")])
    before = sorted(os.listdir(gallery))
    with pytest.raises(ModelMismatchError, match="rebuild"):
        open_at(gallery, location, other_colour_encoder())
    library = open_at(gallery, location, colour_encoder)
    assert len(library) == 1 and library.stats()["model"] == colour_encoder.identity
    assert sorted(os.listdir(gallery)) == before
    other = other_colour_encoder()
    rebuilt = type(library).open_for_rebuild(gallery, location, other)
    assert rebuilt.rebuild().count == 1
    assert open_at(gallery, location, other).stats()["model"] == other.identity


def _collect(queue, children, count: int, seconds: float = 240) -> list:
    got: list = []
    deadline = time.monotonic() + seconds
    while len(got) < count and time.monotonic() < deadline:
        try:
            got.append(queue.get(timeout=1))
        except queue_module.Empty:
            assert all(c.exitcode in (None, 0) for c in children), "a child process failed"
    return got


def test_two_processes_adding_at_once_lose_nothing(where, colour_encoder) -> None:
    gallery, location = where
    open_at(gallery, location, colour_encoder)
    context = multiprocessing.get_context("fork")
    barrier, queue = context.Barrier(2), context.Queue()
    colours = [[(10 * i + 5, 200 - 10 * i, 40 + k * 100) for i in range(5)] for k in range(2)]
    children = [context.Process(target=child_add_at, args=(str(gallery), location, colours[k], barrier, queue))
                for k in range(2)]
    for child in children:
        child.start()
    ids = _collect(queue, children, 2)
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    all_ids = ids[0] + ids[1]
    assert len(all_ids) == 10 and len(set(all_ids)) == 10
    library = open_at(gallery, location, colour_encoder)
    assert sorted(e.id for e in library) == sorted(all_ids) and library.check().ok


def test_a_killed_writer_leaves_a_working_library(where, colour_encoder) -> None:
    gallery, location = where
    library = open_at(gallery, location, colour_encoder, lock_timeout=20)
    library.add([(image_bytes("red"), "r.png")])
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    child = context.Process(target=child_hold_write, args=(str(gallery), location, ready))
    child.start()
    assert ready.wait(120)
    os.kill(child.pid, signal.SIGKILL)
    child.join(30)
    started = time.monotonic()
    assert library.add([(image_bytes("blue"), "b.png")]).results[0].id == 2  # the dead writer's lock is gone
    assert time.monotonic() - started < 10
    assert library.repair().actions  # the half-written gallery file is deleted
    assert library.check().ok and [e.id for e in library] == [1, 2]


def test_stored_rows_are_the_encoders_float16_rows(where, colour_encoder) -> None:
    gallery, location = where
    library = open_at(gallery, location, colour_encoder)
    library.add([(image_bytes(c), f"{c}.png") for c in ("red", "green")])
    ids, features = open_at(gallery, location, colour_encoder).snapshot()
    assert ids.tolist() == [1, 2] and features.dtype == torch.float32
    assert torch.equal(features, library.snapshot()[1])
