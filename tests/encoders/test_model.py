"""ClipEncoder with a tiny real CLIP loaded from a checkpoint file, through clip.load(path, jit=False)."""

import urllib.error

import clip
import pytest
import torch

from clip_app.encoders import ClipEncoder, ModelLoadError, file_sha256, l2_normalize
from tests.support.fakes import TINY_DIM, solid_image


def test_loads_checkpoint_by_path(tiny_encoder, tiny_checkpoint):
    assert tiny_encoder.dim == TINY_DIM
    assert tiny_encoder.input_resolution == 32
    assert tiny_encoder.device == "cpu"
    assert tiny_encoder.name == tiny_checkpoint.name
    assert tiny_encoder.identity == "sha256:" + file_sha256(tiny_checkpoint)


def test_image_features_are_unit_float32_rows(tiny_encoder):
    images = [solid_image(c, size=(50 + 7 * i, 40)) for i, c in enumerate(["red", "green", "blue", "white", "black"])]
    feats = tiny_encoder.encode_images(images)
    assert feats.shape == (5, TINY_DIM)
    assert feats.dtype == torch.float32 and feats.device.type == "cpu"
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(5))


def test_batching_equals_one_by_one(tiny_encoder):
    images = [solid_image(c) for c in ["red", "green", "blue", "yellow", "cyan", "magenta", "grey"]]
    batched = tiny_encoder.encode_images(images, batch_size=3)
    single = torch.cat([tiny_encoder.encode_images([img], batch_size=1) for img in images])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(batched[0], batched[1])


def test_empty_inputs(tiny_encoder):
    assert tiny_encoder.encode_images([]).shape == (0, TINY_DIM)
    assert tiny_encoder.encode_texts([]).shape == (0, TINY_DIM)


def test_text_features_and_cache(tiny_checkpoint):
    enc = ClipEncoder(str(tiny_checkpoint), device="cpu")
    first = enc.encode_texts(["a photo of a cat.", "a photo of a dog.", "a photo of a cat."])
    assert first.shape == (3, TINY_DIM) and first.dtype == torch.float32
    torch.testing.assert_close(first.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(first[0], first[2])
    assert enc.cache_misses == 2 and enc.cache_hits == 1
    calls = []
    original = enc._forward_text
    enc._forward_text = lambda tokens: calls.append(len(tokens)) or original(tokens)
    again = enc.encode_texts(["a photo of a dog.", "a photo of a cat."])
    assert calls == []  # served from the cache, no forward pass
    assert enc.cache_hits == 3
    torch.testing.assert_close(again, first[[1, 0]])


def test_text_cache_is_bounded(tiny_checkpoint):
    enc = ClipEncoder(str(tiny_checkpoint), device="cpu", text_cache_size=3)
    enc.encode_texts([f"label {i}" for i in range(5)])
    assert len(enc._text_cache) == 3
    assert list(enc._text_cache) == ["label 2", "label 3", "label 4"]


def test_long_text_is_truncated_not_an_error(tiny_encoder):
    feats = tiny_encoder.encode_texts(["word " * 1000])
    assert feats.shape == (1, TINY_DIM)
    assert torch.isfinite(feats).all()


def test_l2_normalize_handles_zero_rows():
    out = l2_normalize(torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float16))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[0], torch.tensor([0.6, 0.8]))
    assert torch.isfinite(out).all()


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(ModelLoadError, match="unknown CLIP model 'ViT-X/99'.*ViT-B/32"):
        ClipEncoder("ViT-X/99", device="cpu")


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(ModelLoadError, match="checkpoint file not found"):
        ClipEncoder(str(tmp_path / "nope.pt"), device="cpu")


def test_garbage_checkpoint_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelLoadError, match="could not load the CLIP checkpoint"):
        ClipEncoder(str(bad), device="cpu")


def test_offline_download_failure_explains_the_way_out(monkeypatch, tmp_path):
    def offline(url, root):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(clip.clip, "_download", offline)
    with pytest.raises(ModelLoadError) as info:
        ClipEncoder("ViT-B/32", device="cpu", download_root=tmp_path)
    message = str(info.value)
    assert "ViT-B/32" in message and "could not be downloaded" in message
    assert "--model /path/to/ViT-B-32.pt" in message and "CLIP_APP_MODEL_DIR" in message


def test_official_checkpoint_is_named_by_its_hash(monkeypatch, tiny_checkpoint):
    import clip_app.encoders.clip_torch as model_module

    digest = file_sha256(tiny_checkpoint)
    monkeypatch.setattr(model_module, "official_checksums", lambda: {digest: "ViT-B/32"})
    enc = ClipEncoder(str(tiny_checkpoint), device="cpu")
    assert enc.identity == enc.name == "ViT-B/32"


def test_official_checksums_come_from_the_clip_package():
    from clip_app.encoders import official_checksums

    sums = official_checksums()
    assert sums["40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"] == "ViT-B/32"
    assert set(sums.values()) == set(clip.available_models())
    assert all(len(k) == 64 for k in sums)
