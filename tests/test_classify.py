"""Zero-shot classification math, with the deterministic colour model inside the real ClipEncoder."""

import threading
import time

import pytest
import torch

from clip_app.classify import (
    LOGIT_SCALE,
    ClassifierCache,
    LabelError,
    build_classifier,
    cosines,
    parse_labels,
    probabilities,
    rank,
    tags,
)
from clip_app.prompts import SINGLE_TEMPLATE, imagenet_templates
from tests.support.fakes import solid_image


def test_parse_labels_commas_newlines_trim_dedupe():
    assert parse_labels(" cat, dog\n\n bird ,Cat,  ,dog\r\nhot   dog") == ["cat", "dog", "bird", "hot dog"]
    assert parse_labels(["a", " a ", "b"]) == ["a", "b"]


@pytest.mark.parametrize("text", ["", "   ", ",,\n,", []])
def test_no_labels_is_a_clear_error(text):
    with pytest.raises(LabelError, match="no labels"):
        parse_labels(text)


def test_overlong_label_is_refused():
    with pytest.raises(LabelError, match="label too long"):
        parse_labels("x" * 301)


def test_labels_with_braces_are_taken_literally(colour_encoder):
    labels = parse_labels("red {0}, {}blue")
    weights = build_classifier(colour_encoder, labels, [SINGLE_TEMPLATE])
    assert weights.shape == (colour_encoder.dim, 2)
    assert "a photo of a red {0}." in colour_encoder._text_cache


def test_classifier_shape_and_unit_columns(tiny_encoder):
    labels = ["cat", "dog", "car"]
    weights = build_classifier(tiny_encoder, labels, imagenet_templates()[:5])
    assert weights.shape == (tiny_encoder.dim, 3)
    torch.testing.assert_close(weights.norm(dim=0), torch.ones(3))


def test_classifier_averages_normalised_template_features(tiny_encoder):
    templates = ["a photo of a {}.", "a drawing of a {}."]
    weights = build_classifier(tiny_encoder, ["cat"], templates)
    prompts = tiny_encoder.encode_texts(["a photo of a cat.", "a drawing of a cat."])
    expected = prompts.mean(0)
    torch.testing.assert_close(weights[:, 0], expected / expected.norm())


def test_probabilities_use_clip_logit_scale():
    cos = torch.tensor([[0.30, 0.28, 0.10]])
    probs = probabilities(cos)
    torch.testing.assert_close(probs, (LOGIT_SCALE * cos).softmax(-1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(1))
    assert LOGIT_SCALE == 100.0


def test_right_colour_wins(colour_encoder):
    labels = parse_labels("red, green, blue, yellow")
    weights = build_classifier(colour_encoder, labels, [SINGLE_TEMPLATE])
    for colour in labels:
        feature = colour_encoder.encode_images([solid_image(colour)])[0]
        ranking = rank(labels, feature, weights)
        assert ranking[0].label == colour
        assert ranking[0].probability > 0.9
        assert abs(sum(r.probability for r in ranking) - 1) < 1e-5
        assert ranking[0].cosine == pytest.approx(float(cosines(feature[None], weights)[0, labels.index(colour)]))


def test_tag_mode_lists_every_label_over_the_threshold(colour_encoder):
    labels = ["orange", "yellow", "blue", "red"]
    weights = build_classifier(colour_encoder, labels, [SINGLE_TEMPLATE])
    feature = colour_encoder.encode_images([solid_image((245, 185, 10))])[0]  # between orange and yellow
    scores = rank(labels, feature, weights)
    cos = {s.label: s.cosine for s in scores}
    chosen = tags(scores, threshold=0.2)
    assert [t.label for t in chosen] == sorted([k for k, v in cos.items() if v >= 0.2], key=lambda k: -cos[k])
    assert {t.label for t in chosen} == {"orange", "yellow"}
    assert tags(scores, threshold=1.01) == []


def test_classifier_cache_builds_a_label_set_once(colour_encoder):
    cache = ClassifierCache(size=2)
    first = cache.get(colour_encoder, ["red", "blue"], [SINGLE_TEMPLATE])
    misses = colour_encoder.cache_misses
    hits = colour_encoder.cache_hits
    again = cache.get(colour_encoder, ["red", "blue"], [SINGLE_TEMPLATE])
    assert again is first
    assert (colour_encoder.cache_misses, colour_encoder.cache_hits) == (misses, hits)
    cache.get(colour_encoder, ["green"], [SINGLE_TEMPLATE])
    cache.get(colour_encoder, ["cyan"], [SINGLE_TEMPLATE])
    assert len(cache._items) == 2


def test_a_thousand_labels(tiny_encoder):
    labels = parse_labels(",".join(f"label {i}" for i in range(1000)))
    weights = build_classifier(tiny_encoder, labels, [SINGLE_TEMPLATE])
    feature = tiny_encoder.encode_images([solid_image("red")])[0]
    ranking = rank(labels, feature, weights)
    assert len(ranking) == 1000 and abs(sum(r.probability for r in ranking) - 1) < 1e-4


def test_non_english_and_very_long_text_encode(tiny_encoder):
    feats = tiny_encoder.encode_texts(["一只在草地上奔跑的狗", "chat noir sur un canapé", " ".join(["word"] * 1000)])
    assert feats.shape == (3, tiny_encoder.dim)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(3))


class SlowCountingEncoder:
    """A text encoder that takes its time and counts the texts it encodes."""

    def __init__(self, seconds: float = 0.3, fail_first: bool = False) -> None:
        self.seconds, self.fail_first = seconds, fail_first
        self.calls = 0
        self.texts = 0
        self.lock = threading.Lock()

    def encode_texts(self, texts):
        with self.lock:
            self.calls += 1
            call = self.calls
            self.texts += len(texts)
        time.sleep(self.seconds)
        if self.fail_first and call == 1:
            raise RuntimeError("out of memory")
        rows = torch.arange(len(texts) * 4, dtype=torch.float32).reshape(len(texts), 4) + 1
        return rows / rows.norm(dim=1, keepdim=True)


def _get_from_threads(cache: ClassifierCache, encoder, count: int = 3) -> tuple[list, list]:
    results, errors = [], []

    def ask() -> None:
        try:
            results.append(cache.get(encoder, ["cat", "dog"], ["a photo of a {}.", "a {}."]))
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results, errors


def test_concurrent_requests_for_the_same_classifier_build_it_once() -> None:
    encoder = SlowCountingEncoder()
    results, errors = _get_from_threads(ClassifierCache(), encoder)
    assert not errors and len(results) == 3
    assert encoder.calls == 1 and encoder.texts == 4  # 2 labels x 2 templates, encoded once
    assert all(r is results[0] for r in results)


def test_when_the_first_build_fails_a_waiting_request_builds_it() -> None:
    encoder = SlowCountingEncoder(fail_first=True)
    results, errors = _get_from_threads(ClassifierCache(), encoder)
    assert len(errors) == 1 and len(results) == 2 and encoder.calls == 2
    assert all(r is results[0] for r in results)
