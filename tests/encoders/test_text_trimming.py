"""The trimmed text transformer (model.encode_text_trimmed): the same text features from only the positions up to
the end-of-text token."""

import clip
import pytest
import torch
from clip.clip import _transform

import clip_app.encoders.clip_torch as model_module
from clip_app.encoders import ClipEncoder, encode_text_trimmed, has_causal_text_tower, l2_normalize
from tests.support.fakes import ColorClip


@pytest.fixture(scope="module")
def two_layer_clip() -> clip.model.CLIP:
    torch.manual_seed(1)
    return clip.model.CLIP(32, 32, 1, 64, 16, 77, 49408, 64, 2, 2).eval()


TEXTS = ["a dog", "a photo of a small red car parked next to a tree in the rain", "x",
         "an itap of the cat.", "a very long caption " + "word " * 100]


def test_trimmed_text_tower_equals_the_full_one(two_layer_clip):
    tokens = clip.tokenize(TEXTS, truncate=True)
    with torch.inference_mode():
        full = two_layer_clip.encode_text(tokens)
        trimmed = encode_text_trimmed(two_layer_clip, tokens)
        short = clip.tokenize(TEXTS[:1] + TEXTS[2:4])
        torch.testing.assert_close(encode_text_trimmed(two_layer_clip, short), two_layer_clip.encode_text(short),
                                   atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=1e-4)


def test_encoder_runs_only_the_needed_positions(two_layer_clip):
    encoder = ClipEncoder.from_model(two_layer_clip, _transform(32), name="two-layer")
    lengths = []
    hook = two_layer_clip.transformer.resblocks[0].mlp.register_forward_hook(
        lambda module, args, out: lengths.append(out.shape[0]))
    try:
        encoder.encode_texts(["a dog"])  # start, "a", "dog", end
    finally:
        hook.remove()
    assert lengths == [4]


def test_encode_texts_keeps_the_input_order_across_length_sorted_batches(two_layer_clip, monkeypatch):
    monkeypatch.setattr(model_module, "TEXT_BATCH_SIZE", 2)
    encoder = ClipEncoder.from_model(two_layer_clip, _transform(32), name="two-layer")
    texts = TEXTS + ["a dog"]  # a repeat, answered from the same row
    got = encoder.encode_texts(texts)
    with torch.inference_mode():
        want = l2_normalize(two_layer_clip.encode_text(clip.tokenize(texts, truncate=True)))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_models_without_clips_text_tower_use_their_own_encode_text():
    assert not has_causal_text_tower(ColorClip())
    assert has_causal_text_tower(clip.model.CLIP(32, 32, 1, 64, 16, 77, 49408, 64, 1, 1))
