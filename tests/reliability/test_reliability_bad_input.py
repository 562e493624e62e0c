"""Bad and awkward image files fed to FeatureLibrary.add end to end: refused with a clear message and nothing stored,
or stored byte for byte with the right feature (alpha on white, first frame, EXIF applied, HEIC decoded)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from clip_app import images
from clip_app.images import decode_image
from tests.support.fakes import COLOUR_NAMES
from tests.support.image_files import _INVERSE, heic_header, jpeg_with_orientation, quadrants
from tests.support.library_helpers import image_bytes, open_library
from tests.support.reliability_helpers import (
    awkward_good_samples,
    bad_samples,
    folder_state,
    heic_bytes,
    layout_encoder,
)

BAD = bad_samples()


@pytest.mark.parametrize("sample", BAD, ids=[s.name for s in BAD])
def test_a_bad_file_is_refused_by_name_and_nothing_is_stored(tmp_path: Path, colour_encoder, sample) -> None:
    library = open_library(tmp_path, colour_encoder)
    library.add([(image_bytes("red"), "red.png")])
    on_disk = tmp_path / "inbox" / sample.name
    on_disk.parent.mkdir()
    on_disk.write_bytes(sample.data)
    before = folder_state(tmp_path)
    report = library.add([(sample.data, sample.name), on_disk])
    for result in report.results:
        assert result.status == "failed" and result.id is None
        assert re.search(sample.expect, result.error), result.error
    assert report.results[1].name == str(on_disk)
    assert folder_state(tmp_path) == before  # gallery folder and library file unchanged, no temp files left
    assert len(library) == 1 and library.check().ok
    assert library.add([(image_bytes("blue"), "blue.png")]).results[0].id == 2  # and the library keeps working


def test_bad_files_in_a_batch_do_not_stop_the_good_ones(tmp_path: Path, colour_encoder) -> None:
    library = open_library(tmp_path, colour_encoder)
    items = [(s.data, s.name) for s in BAD] + [(image_bytes("green"), "green.png")]
    report = library.add(items)
    assert [r.status for r in report.results] == ["failed"] * len(BAD) + ["added"]
    assert report.summary() == f"1 added, 0 duplicates, 0 near-duplicates, {len(BAD)} failed"
    assert [e.name for e in library] == ["green.png"]
    assert sorted(p.name for p in (tmp_path / "gallery").iterdir()) == ["000001.png"]


def test_heic_without_pillow_heif_is_refused_with_the_way_to_enable_it(tmp_path: Path, colour_encoder,
                                                                       monkeypatch) -> None:
    library = open_library(tmp_path, colour_encoder)
    monkeypatch.setattr(images, "HEIF_SUPPORTED", False)
    before = folder_state(tmp_path)
    result = library.add([(heic_bytes(), "IMG_0001.HEIC")]).results[0]
    assert result.status == "failed" and "pip install pillow-heif" in result.error
    assert folder_state(tmp_path) == before


def test_a_heic_file_with_a_broken_body_is_refused(tmp_path: Path, colour_encoder) -> None:
    library = open_library(tmp_path, colour_encoder)
    result = library.add([(heic_header(), "IMG_0002.HEIC")]).results[0]
    assert result.status == "failed" and result.error.startswith("IMG_0002.HEIC: ")
    assert len(library) == 0 and not (tmp_path / "gallery").exists()


def test_a_real_heic_round_trip(tmp_path: Path, colour_encoder) -> None:
    data = heic_bytes((20, 20, 220), (64, 48))
    assert images.HEIF_SUPPORTED and images.is_heif(data)
    library = open_library(tmp_path, colour_encoder)
    result = library.add([(data, "IMG_0003.HEIC")]).results[0]
    assert result.status == "added"
    entry = library.get(result.id)
    assert entry.file == "000001.heic" and entry.path.read_bytes() == data
    reopened = open_library(tmp_path, colour_encoder)
    assert reopened.check().ok
    decoded = decode_image(entry.path.read_bytes(), entry.file)
    assert decoded.size == (64, 48)
    expected = colour_encoder.encode_images([decoded])[0]
    assert float(reopened.snapshot()[1][0] @ expected) > 0.999
    query = colour_encoder.encode_texts(["a blue photo"])[0]
    assert reopened.search(query, 1)[0][0].id == result.id
    assert library.add([(data, "again.heic")]).results[0].status == "duplicate"


def test_awkward_but_valid_images_are_stored_byte_for_byte_with_the_right_feature(tmp_path: Path,
                                                                                   colour_encoder) -> None:
    samples = awkward_good_samples()
    library = open_library(tmp_path, colour_encoder, near_duplicate_threshold=1.01)
    report = library.add([(s.data, s.name) for s in samples])
    assert [r.status for r in report.results] == ["added"] * len(samples), report.results
    ids, features = library.snapshot()
    words = colour_encoder.encode_texts(list(COLOUR_NAMES))  # [C, D]
    for sample, result, row in zip(samples, report.results, features):
        entry = library.get(result.id)
        assert entry.path.read_bytes() == sample.data, sample.name
        fmt = Image.open(io.BytesIO(sample.data)).format
        assert entry.file.endswith(images.FORMAT_EXTENSIONS[fmt]), (sample.name, entry.file)
        seen_as = COLOUR_NAMES[int((words @ row).argmax())]
        assert seen_as == sample.expect, (sample.name, seen_as)
    assert open_library(tmp_path, colour_encoder).check().ok


def test_rotated_jpegs_are_stored_with_the_features_of_the_upright_picture(tmp_path: Path) -> None:
    encoder = layout_encoder()
    upright = quadrants(64, 48)
    transforms = [upright] + [upright.transpose(t) for t in _INVERSE.values() if t is not None]
    candidates = encoder.encode_images(transforms)  # [8, D]: upright first, then every wrong orientation
    library = open_library(tmp_path, encoder, near_duplicate_threshold=1.01)
    report = library.add([(jpeg_with_orientation(upright, o), f"orientation-{o}.jpg") for o in range(1, 9)])
    assert [r.status for r in report.results] == ["added"] * 8
    _, stored = library.snapshot()
    for orientation, row in enumerate(stored, start=1):
        similarities = candidates @ row
        assert float(similarities[0]) > 0.99, (orientation, similarities)
        assert int(similarities.argmax()) == 0, (orientation, similarities)  # closer to upright than any other
        raw = Image.open(library.get(orientation).path).convert("RGB")  # the pixels as stored, EXIF ignored
        if orientation != 1:  # the test can fail: ignoring EXIF would give a clearly different feature
            assert float(encoder.encode_images([raw])[0] @ candidates[0]) < 0.9
    assert torch.allclose(stored, stored[0].expand_as(stored), atol=0.02)
