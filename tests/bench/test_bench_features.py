"""The shared batched file encoder of the benchmarks and its feature cache."""

import os
import threading

import pytest
import torch

from clip_app.bench.features import (
    FeatureCache,
    cached_image_features,
    encode_image_files,
    image_features_key,
    text_features_key,
)
from clip_app.bench.timing import StageTimer
from clip_app.images import ImageError
from tests.support.fakes import COLOUR_NAMES, color_encoder, solid_image
from tests.support.threads import run_in_threads


def write_images(folder, names):
    paths = []
    for name in names:
        path = folder / f"{name}.png"
        solid_image(name).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("workers", [0, 1])
def test_features_in_file_order_match_direct_encoding(tmp_path, colour_encoder, workers):
    paths = write_images(tmp_path, COLOUR_NAMES[:5])
    timer = StageTimer()
    feats = encode_image_files(colour_encoder, paths, batch_size=2, workers=workers, timer=timer, progress=False)
    direct = colour_encoder.encode_images([solid_image(n) for n in COLOUR_NAMES[:5]])
    torch.testing.assert_close(feats, direct)
    assert set(timer.as_dict()) == {"data_loading", "image_encoding"}


@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_file_raises_image_error_naming_it(tmp_path, colour_encoder, workers):
    paths = write_images(tmp_path, ["red", "blue"])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError, match="broken.jpg: "):
        encode_image_files(colour_encoder, [*paths, broken], batch_size=2, workers=workers, progress=False)


def test_concurrent_saves_of_one_key_leave_one_valid_entry_and_no_temp_files(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path / "cache")
    real_save = torch.save
    both_written = threading.Barrier(2, timeout=20)

    def save_then_wait(obj, f, *args, **kwargs):  # both runs have written their temp file before either renames
        real_save(obj, f, *args, **kwargs)
        both_written.wait()

    monkeypatch.setattr(torch, "save", save_then_wait)
    candidates = [torch.full((3, 4), 1.0), torch.full((3, 4), 2.0)]
    def run(features):
        cache.save("images", "k", features, {"value": float(features[0, 0])})

    assert run_in_threads(run, [(f,) for f in candidates]) == []
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache.path("images", "k").name]
    features, meta = cache.load_entry("images", "k")
    assert any(torch.equal(features, c) for c in candidates) and meta["value"] == float(features[0, 0])


def test_a_failed_save_leaves_no_temp_file_and_keeps_the_old_entry(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path)
    old = torch.ones(2, 3)
    cache.save("images", "k", old)

    def fail_half_way(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as handle:
                handle.write(b"partial")
        else:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail_half_way)
    with pytest.raises(OSError, match="disk full"):
        cache.save("images", "k", torch.zeros(2, 3))
    assert [p.name for p in tmp_path.iterdir()] == [cache.path("images", "k").name]
    assert torch.equal(cache.load("images", "k"), old)


def test_cached_image_features_reads_back_what_it_encoded_with_its_seconds(tmp_path, colour_encoder):
    paths = write_images(tmp_path, COLOUR_NAMES[:3])
    cache = FeatureCache(tmp_path / "cache")
    timer = StageTimer()
    first = cached_image_features(colour_encoder, paths, cache, label="x", batch_size=2, workers=0, timer=timer,
                                  progress=False, meta={"note": "n"})
    assert not first.cached and set(first.seconds) == {"data_loading", "image_encoding"}
    assert timer.as_dict() == first.seconds
    (entry,) = (tmp_path / "cache").iterdir()
    assert entry.name.startswith("x-")
    assert cache.load_entry("x", entry.stem[2:])[1]["note"] == "n"

    timer = StageTimer()
    second = cached_image_features(color_encoder(), paths, cache, label="x", workers=0, timer=timer, progress=False)
    assert second.cached and second.seconds == first.seconds and timer.as_dict() == {}
    torch.testing.assert_close(second.features, first.features)
    assert not cached_image_features(colour_encoder, paths, None, workers=0, progress=False).cached


def test_feature_keys_depend_on_model_precision_files_and_strings(tmp_path, monkeypatch):
    paths = write_images(tmp_path, ["red", "blue"])
    fp32, other, fp16 = color_encoder(), color_encoder(), color_encoder()
    monkeypatch.setattr(other, "identity", "another-model")
    monkeypatch.setattr(fp16, "dtype", torch.float16)
    assert image_features_key(fp32, paths) == image_features_key(color_encoder(), paths)
    keys = {image_features_key(e, paths) for e in (fp32, other, fp16)} | {image_features_key(fp32, paths[:1])}
    assert len(keys) == 4
    texts = ["a red thing", "a blue thing"]
    base = text_features_key(fp32, texts, "p")
    others = {text_features_key(other, texts, "p"), text_features_key(fp16, texts, "p"),
              text_features_key(fp32, texts[::-1], "p"), text_features_key(fp32, texts, "q")}
    assert base == text_features_key(color_encoder(), texts, "p") and base not in others and len(others) == 4


@pytest.mark.parametrize(("cpus", "expected"), [(16, 8), (3, 3), (None, 1)])
def test_every_benchmark_defaults_to_the_same_workers(monkeypatch, cpus, expected):
    from clip_app.bench.__main__ import build_parser
    from clip_app.bench.features import default_workers

    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    assert default_workers() == expected
    parser, _ = build_parser()
    for benchmark in ("imagenet", "flickr8k"):
        assert parser.parse_args([benchmark, "--root", "data"]).workers == expected, benchmark
