"""FeatureLibrary: storage format, IDs, duplicates, atomic saves, model and corruption safety, concurrency."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import queue as queue_module
import time
from pathlib import Path

import pytest
import torch

import clip_app.library.store as library_store
from clip_app.library import (
    FeatureLibrary,
    LibraryCorruptError,
    LibraryWriteError,
    ModelMismatchError,
    UnknownImageError,
)
from tests.support.fakes import COLOUR_NAMES, solid_image
from tests.support.library_helpers import image_bytes, open_library, other_colour_encoder, write_image
from tests.support.store_helpers import child_add_at
from tests.support.threads import run_in_threads


def test_add_stores_original_bytes_and_rows_that_load_with_weights_only(tmp_path: Path, colour_encoder) -> None:
    library = open_library(tmp_path, colour_encoder)
    red, blue = image_bytes("red", "PNG"), image_bytes("blue", "JPEG")
    report = library.add([(red, "red.png"), (blue, "blue.jpg")])
    assert [r.status for r in report.results] == ["added", "added"]
    assert [r.id for r in report.results] == [1, 2]
    assert (tmp_path / "gallery" / "000001.png").read_bytes() == red
    assert (tmp_path / "gallery" / "000002.jpg").read_bytes() == blue

    raw = torch.load(tmp_path / "features_library.pth", weights_only=True)
    assert raw["model"] == colour_encoder.identity and raw["dim"] == colour_encoder.dim
    assert raw["ids"].dtype == torch.int64 and raw["ids"].tolist() == [1, 2]
    assert raw["features"].shape == (2, colour_encoder.dim)
    assert torch.allclose(raw["features"].float().norm(dim=1), torch.ones(2), atol=1e-2)
    assert raw["features"].dtype == torch.float16 and raw["features"].untyped_storage().nbytes() == 2 * 13 * 2
    assert raw["files"].split("\n") == ["000001.png", "000002.jpg"]
    assert raw["sha256"].dtype == torch.uint8 and raw["sha256"].shape == (2, 32)
    assert bytes(raw["sha256"][0].tolist()) == hashlib.sha256(red).digest()
    assert bytes(raw["sha256"][1].tolist()) == hashlib.sha256(blue).digest()
    assert raw["added"].dtype == torch.float64 and raw["added"].shape == (2,) and raw["next_id"] == 3
    assert raw["names"].split("\n") == ["red.png", "blue.jpg"] and raw["sizes"].tolist() == [len(red), len(blue)]

    again = open_library(tmp_path, colour_encoder)
    ids, features = again.snapshot()
    assert ids.tolist() == [1, 2] and features.dtype == torch.float32
    assert torch.equal(features, library.snapshot()[1])  # memory holds exactly what is on disk
    expected = colour_encoder.encode_images([solid_image("red", (24, 20)), solid_image("blue", (24, 20))])
    assert torch.allclose(features, expected, atol=2e-3)
    entry = again.get(2)
    assert entry.file == "000002.jpg" and entry.path == tmp_path / "gallery" / "000002.jpg"
    assert entry.size == len(blue) and entry.name == "blue.jpg" and entry.added > 0


def test_the_file_extension_comes_from_the_real_format(tmp_path: Path, colour_encoder) -> None:
    library = open_library(tmp_path, colour_encoder)
    source = tmp_path / "actually_png.jpg"
    source.write_bytes(image_bytes("green", "PNG"))
    report = library.add([source])
    assert report.results[0].name == str(source)
    assert library.get(report.results[0].id).file == "000001.png"


def test_ids_are_never_reused_after_remove(tmp_path: Path, colour_encoder) -> None:
    library = open_library(tmp_path, colour_encoder)
    library.add([(image_bytes(c), c) for c in ("red", "green", "blue")])
    assert library.remove([3, 2]) == [3, 2]
    assert not (tmp_path / "gallery" / "000003.png").exists()
    assert [e.id for e in library] == [1]
    assert library.add([(image_bytes("yellow"), "y")]).results[0].id == 4
    reopened = open_library(tmp_path, colour_encoder)
    library.remove([4])
    assert reopened.add([(image_bytes("cyan"), "c")]).results[0].id == 5


def test_remove_of_an_unknown_id_removes_nothing(tmp_path: Path, colour_encoder) -> None:
    library = open_library(tmp_path, colour_encoder)
    library.add([(image_bytes("red"), "r"), (image_bytes("blue"), "b")])
    before = (tmp_path / "features_library.pth").read_bytes()
    with pytest.raises(UnknownImageError, match="7"):
        library.remove([1, 7])
    assert (tmp_path / "features_library.pth").read_bytes() == before
    assert len(library) == 2 and (tmp_path / "gallery" / "000001.png").exists()
    with pytest.raises(KeyError):  # UnknownImageError is a KeyError too
        library.get(99)


def test_duplicate_bytes_keep_the_first_id_and_store_nothing(tmp_path: Path, colour_encoder) -> None:
    library = open_library(tmp_path, colour_encoder)
    red = image_bytes("red")
    first = library.add([(red, "a.png"), (red, "b.png")])
    assert [(r.status, r.id) for r in first.results] == [("added", 1), ("duplicate", 1)]
    second = library.add([(red, "c.png")])
    assert [(r.status, r.id) for r in second.results] == [("duplicate", 1)]
    assert library.find_sha256(hashlib.sha256(red).hexdigest()) == 1
    assert len(library) == 1 and sorted(os.listdir(tmp_path / "gallery")) == ["000001.png"]
    assert second.summary() == "0 added, 1 duplicate, 0 near-duplicates, 0 failed"


def test_near_duplicates_are_reported_with_the_id_they_resemble(tmp_path: Path, colour_encoder) -> None:
    library = open_library(tmp_path, colour_encoder, near_duplicate_threshold=0.97)
    library.add([(image_bytes("red"), "red.png"), (image_bytes("blue"), "blue.png")])
    report = library.add([(image_bytes("blue", "JPEG", (40, 30)), "blue.jpg"), (image_bytes("green"), "g.png"),
                          (image_bytes("green", "BMP", (10, 10)), "g.bmp")])
    near = {r.name: (r.near_duplicate_of, r.similarity) for r in report.results}
    assert near["blue.jpg"][0] == 2 and near["blue.jpg"][1] >= 0.97
    assert near["g.png"] == (None, None)
    assert near["g.bmp"][0] == report.results[1].id  # an earlier image of the same call counts too
    assert [r.name for r in report.near_duplicates] == ["blue.jpg", "g.bmp"]
    assert all(r.status == "added" for r in report.results)  # reported, still stored
    strict = open_library(tmp_path, colour_encoder, near_duplicate_threshold=1.01)
    assert strict.add([(image_bytes("red", "GIF"), "r.gif")]).results[0].near_duplicate_of is None


def test_failures_are_named_and_the_rest_is_added(tmp_path: Path, colour_encoder) -> None:
    library = open_library(tmp_path, colour_encoder)
    report = library.add([tmp_path / "missing.png", (b"not an image", "junk.png"), (image_bytes("red"), "ok.png"),
                          (b"", "empty.png")])
    assert [r.status for r in report.results] == ["failed", "failed", "added", "failed"]
    assert "file not found" in report.results[0].error and "missing.png" in report.results[0].name
    assert "junk.png" in report.results[1].error and "empty" in report.results[3].error
    assert len(library) == 1 and report.summary().endswith("3 failed")


def test_encodes_in_batches_and_saves_once_per_call(tmp_path: Path, colour_encoder, monkeypatch) -> None:
    library = open_library(tmp_path, colour_encoder, batch_size=2)
    calls: list[int] = []
    original_encode = colour_encoder.encode_pixels
    monkeypatch.setattr(colour_encoder, "encode_pixels", lambda pixels: (
        calls.append(len(pixels)), original_encode(pixels))[1])
    saves: list[int] = []
    original_save = library_store.save_state
    monkeypatch.setattr(library_store, "save_state", lambda s, p, extra=None: (saves.append(len(s)),
                                                                                original_save(s, p, extra)))
    progress: list[tuple[int, int]] = []
    report = library.add([(image_bytes(c), c) for c in COLOUR_NAMES[:5]], progress=lambda d, t: progress.append((d, t)))
    assert len(report.added) == 5
    assert calls == [2, 2, 1] and saves == [5]
    assert progress[-1] == (5, 5)


def test_a_failed_save_leaves_the_old_file_intact_and_no_new_files(tmp_path: Path, colour_encoder,
                                                                     monkeypatch) -> None:
    library = open_library(tmp_path, colour_encoder)
    library.add([(image_bytes("red"), "r")])
    path = tmp_path / "features_library.pth"
    before = path.read_bytes()
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst).name.startswith(path.name):  # the library file and its journal; gallery files still work
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(LibraryWriteError, match="previous file is unchanged"):
        library.add([(image_bytes("blue"), "b")])
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["ids"].tolist() == [1]
    assert sorted(os.listdir(tmp_path / "gallery")) == ["000001.png"]  # the new image file was taken back
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []
    with pytest.raises(LibraryWriteError):
        library.remove([1])
    assert path.read_bytes() == before and (tmp_path / "gallery" / "000001.png").exists()
    monkeypatch.setattr(os, "replace", real_replace)
    assert len(library) == 1 and library.add([(image_bytes("blue"), "b")]).results[0].id == 2


def test_a_library_of_another_model_is_refused_and_kept(tmp_path: Path, colour_encoder) -> None:
    open_library(tmp_path, colour_encoder).add([(image_bytes("red"), "r")])
    before = (tmp_path / "features_library.pth").read_bytes()
    with pytest.raises(ModelMismatchError) as info:
        open_library(tmp_path, other_colour_encoder())
    message = str(info.value)
    assert "color-test" in message and "other-colour-model" in message and "rebuild" in message
    assert info.value.library_model == "color-test" and info.value.running_model == "other-colour-model"
    assert (tmp_path / "features_library.pth").read_bytes() == before
    reader = FeatureLibrary.open_for_rebuild(tmp_path / "gallery", tmp_path / "features_library.pth",
                                             other_colour_encoder())
    assert len(reader) == 1
    with pytest.raises(ModelMismatchError):
        reader.add([(image_bytes("blue"), "b")])
    with pytest.raises(ModelMismatchError):
        reader.search(torch.ones(13) / 13 ** 0.5, 1)
    assert (tmp_path / "features_library.pth").read_bytes() == before


@pytest.mark.parametrize("content", [b"", b"garbage, not a torch file", "truncated", "wrong_dict", "code"])
def test_a_corrupt_file_is_reported_and_kept_byte_identical(tmp_path: Path, colour_encoder, content) -> None:
    path = tmp_path / "features_library.pth"
    write_image(tmp_path / "gallery" / "000001.png", "red")
    if content == "truncated":
        open_library(tmp_path, colour_encoder)  # first run writes a real file
        path.write_bytes(path.read_bytes()[:200])
    elif content == "wrong_dict":
        torch.save({"version": 1, "model": "color-test", "dim": 13, "ids": torch.tensor([1, 1]),
                    "features": torch.zeros(2, 13), "files": "a\nb", "sha256": torch.zeros(2, 32, dtype=torch.uint8)},
                   path)
    elif content == "code":
        torch.save({"payload": FeatureLibrary}, path)  # a pickled class: weights_only refuses it
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    with pytest.raises(LibraryCorruptError, match="left untouched"):
        open_library(tmp_path, colour_encoder)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path / "gallery")) == ["000001.png"]


def test_first_run_indexes_the_gallery(tmp_path: Path, colour_encoder) -> None:
    gallery = tmp_path / "gallery"
    write_image(gallery / "000001.png", "red")
    write_image(gallery / "000005.jpg", "blue", "JPEG")
    cat = write_image(gallery / "cat photo.jpg", "green", "JPEG").read_bytes()
    (gallery / "CREDITS.md").write_text("credits")
    (gallery / "notes.txt").write_text("not an image")
    library = open_library(tmp_path, colour_encoder)
    assert [(e.id, e.file) for e in library] == [(1, "000001.png"), (5, "000005.jpg"), (6, "000006.jpg")]
    assert (gallery / "000006.jpg").read_bytes() == cat and not (gallery / "cat photo.jpg").exists()
    assert library.get(6).name == "cat photo.jpg"
    assert (gallery / "notes.txt").exists() and (gallery / "CREDITS.md").exists()
    assert library.first_run_report is not None and library.first_run_report.indexed == [1, 5, 6]
    assert (tmp_path / "features_library.pth").exists()
    assert library.add([(image_bytes("yellow"), "y")]).results[0].id == 7


def test_an_empty_gallery_makes_an_empty_library_without_a_file(tmp_path: Path, colour_encoder) -> None:
    library = open_library(tmp_path, colour_encoder)
    assert len(library) == 0 and library.search(torch.ones(13) / 13 ** 0.5, 3) == []
    assert not (tmp_path / "features_library.pth").exists()
    assert library.stats()["count"] == 0 and library.stats()["file_size"] == 0


def test_browse_search_and_stats(tmp_path: Path, colour_encoder) -> None:
    library = open_library(tmp_path, colour_encoder)
    library.add([(image_bytes(c), f"{c}.png") for c in COLOUR_NAMES[:7]])
    assert [e.id for e in library.page(1, per_page=3)] == [1, 2, 3]
    assert [e.id for e in library.page(3, per_page=3)] == [7]
    assert library.page(4, per_page=3) == []
    with pytest.raises(ValueError):
        library.page(0)
    query = colour_encoder.encode_texts(["a blue thing"])[0]
    hits = library.search(query, 2)
    assert hits[0][0].name == "blue.png" and hits[0][1] >= hits[1][1]
    stats = library.stats()
    assert stats["count"] == 7 and stats["model"] == "color-test" and stats["dim"] == 13
    assert stats["file_size"] == (tmp_path / "features_library.pth").stat().st_size
    assert stats["next_id"] == 8


def test_a_second_instance_sees_writes_of_the_first(tmp_path: Path, colour_encoder) -> None:
    one, two = open_library(tmp_path, colour_encoder), open_library(tmp_path, colour_encoder)
    one.add([(image_bytes("red"), "r")])
    assert len(two) == 1
    assert two.add([(image_bytes("red"), "r")]).results[0].status == "duplicate"
    assert two.add([(image_bytes("blue"), "b")]).results[0].id == 2
    one.remove([1])
    assert [e.id for e in two] == [2]


def test_two_processes_adding_at_once_lose_nothing(tmp_path: Path, colour_encoder) -> None:
    open_library(tmp_path, colour_encoder)  # the gallery is empty: no file yet, both children create it
    context = multiprocessing.get_context("spawn")
    barrier, queue = context.Barrier(2), context.Queue()
    colours = [[(10 * i + 5, 200 - 10 * i, 40 + k * 100) for i in range(8)] for k in range(2)]
    where = (str(tmp_path / "gallery"), str(tmp_path / "features_library.pth"))
    children = [context.Process(target=child_add_at, args=(*where, colours[k], barrier, queue)) for k in range(2)]
    for child in children:
        child.start()
    ids: list[list[int]] = []
    deadline = time.monotonic() + 300
    while len(ids) < len(children) and time.monotonic() < deadline:
        try:
            ids.append(queue.get(timeout=1))
        except queue_module.Empty:
            assert all(c.exitcode in (None, 0) for c in children), "a writer process failed"
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    all_ids = ids[0] + ids[1]
    assert len(all_ids) == 16 and len(set(all_ids)) == 16
    library = open_library(tmp_path, colour_encoder)
    assert sorted(e.id for e in library) == sorted(all_ids)
    assert library.check().ok


def test_threads_adding_to_one_library_and_to_two_instances_lose_nothing(tmp_path: Path, colour_encoder) -> None:
    shared = open_library(tmp_path, colour_encoder)
    second = open_library(tmp_path, colour_encoder)  # another instance in the same process: its own file lock

    def worker(library: FeatureLibrary, k: int) -> None:
        for i in range(3):
            library.add([(image_bytes((40 * k + 10, 30 * i + 5, 200 - 20 * k)), f"{k}-{i}.png")])

    assert not run_in_threads(worker, [(shared if k % 2 else second, k) for k in range(4)])
    fresh = open_library(tmp_path, colour_encoder)
    assert [e.id for e in fresh] == list(range(1, 13)) and fresh.check().ok
    assert len(shared) == 12 and len(second) == 12
