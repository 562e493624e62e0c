"""ImageNet zero-shot evaluation: exact known answers with the colour model in every layout and prompt mode,
features cached so a second run encodes nothing, and the same numbers as CLIP_benchmark's own code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from clip.clip import tokenize

from clip_app.bench.features import FeatureCache
from clip_app.bench.imagenet.data import read_imagenet
from clip_app.bench.imagenet.evaluate import evaluate_model, parse_modes, text_classifier
from clip_app.bench.imagenet.report import misclassified_grid
from clip_app.encoders import ClipEncoder
from clip_app.images import open_image
from clip_app.prompts import SINGLE_TEMPLATE, imagenet_classnames, imagenet_templates, imagenet_wnids
from tests.support.clip_benchmark_compat import zeroshot_classification
from tests.support.fakes import color_encoder
from tests.support.imagenet_helpers import (
    COLOUR_NAMES,
    EXPECTED,
    Sample,
    colour_samples,
    make_kaggle,
    make_official,
    make_torchvision,
    names_with,
    write_jpeg,
    write_noise_jpeg,
)

MAKERS = {"official": make_official, "torchvision": make_torchvision, "kaggle": make_kaggle}
#: three of the 80 CLIP templates, one of them with colour words of its own ("black and white")
TEMPLATES = ("a photo of a {}.", "a black and white photo of the {}.", "itap of a {}.")


def _colour_run(encoder: ClipEncoder, root: Path, cache: FeatureCache | None = None):
    dataset = read_imagenet(root)
    result = evaluate_model(encoder, dataset, ("raw", "single", "ensemble"), cache=cache, batch_size=4, workers=0,
                            curated_names=names_with(COLOUR_NAMES),
                            raw_names=names_with({w: f"{c}, {c} one" for w, c in COLOUR_NAMES.items()}, "an object"),
                            templates=TEMPLATES, progress=False)
    return dataset, result


def test_templates_used_here_are_real_clip_templates() -> None:
    assert set(TEMPLATES) <= set(imagenet_templates())


@pytest.mark.parametrize("layout", sorted(MAKERS))
def test_known_answer_in_every_layout_and_mode(tmp_path: Path, layout: str) -> None:
    root = MAKERS[layout](tmp_path / layout, colour_samples())
    dataset, result = _colour_run(color_encoder(), root)
    assert result.n_images == len(dataset) == 11
    for mode in ("raw", "single", "ensemble"):
        metrics = result.modes[mode].metrics
        assert metrics["top1"] == pytest.approx(EXPECTED["top1"]), mode
        assert metrics["top5"] == pytest.approx(EXPECTED["top5"]), mode
        assert metrics["mean_per_class"] == pytest.approx(EXPECTED["mean_per_class"]), mode
    assert result.modes["ensemble"].n_templates == 3 and result.modes["raw"].n_templates == 1
    # the image whose colour lies between orange and yellow: orange first, its true class (yellow) second
    names = names_with(COLOUR_NAMES)
    k = next(i for i, f in enumerate(dataset.files) if Path(f).stem == "ILSVRC2012_val_00000008")
    top = result.modes["single"].top_classes[k].tolist()
    assert [names[c] for c in top[:2]] == ["orange", "yellow"]
    assert dataset.labels[k] == top[1]


def test_timings_and_throughput_are_recorded(tmp_path: Path) -> None:
    _, result = _colour_run(color_encoder(), make_official(tmp_path / "o", colour_samples()))
    assert result.image_encoding > 0 and result.data_loading > 0 and not result.image_features_cached
    timings = result.mode_timings("ensemble")
    assert timings["text_encoding"] > 0
    assert timings["total"] == pytest.approx(sum(v for k, v in timings.items() if k != "total"))
    assert result.seconds_per_image("ensemble") == pytest.approx(timings["total"] / 11)
    assert result.image_throughput == pytest.approx(11 / (result.data_loading + result.image_encoding))


def test_second_run_encodes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_official(tmp_path / "o", colour_samples())
    cache = FeatureCache(tmp_path / "cache")
    _, first = _colour_run(color_encoder(), root, cache)
    assert not first.image_features_cached and not any(m.text_cached for m in first.modes.values())

    fresh = color_encoder()  # a new encoder: nothing in its in-memory text cache either

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the encoder was called although the features are cached")

    monkeypatch.setattr(fresh, "encode_pixels", forbidden)
    monkeypatch.setattr(fresh, "encode_images", forbidden)
    monkeypatch.setattr(fresh, "encode_texts", forbidden)
    _, second = _colour_run(fresh, root, cache)
    assert second.image_features_cached and all(m.text_cached for m in second.modes.values())
    for mode in first.modes:
        assert second.modes[mode].metrics == first.modes[mode].metrics
        assert torch.equal(second.modes[mode].top_classes, first.modes[mode].top_classes)
    # the recorded times are those of the run that computed the features
    assert second.image_encoding == pytest.approx(first.image_encoding)


def test_changed_image_file_is_encoded_again(tmp_path: Path) -> None:
    root = make_official(tmp_path / "o", colour_samples())
    cache = FeatureCache(tmp_path / "cache")
    _colour_run(color_encoder(), root, cache)
    write_jpeg(root / "ILSVRC2012_val_00000005.JPEG", (20, 20, 220), size=(41, 30))  # the red one made blue
    _, again = _colour_run(color_encoder(), root, cache)
    assert not again.image_features_cached
    assert again.modes["single"].metrics["top1"] == pytest.approx(10 / 11)


def test_misclassified_grid_shows_the_errors(tmp_path: Path) -> None:
    dataset, result = _colour_run(color_encoder(), make_official(tmp_path / "o", colour_samples()))
    path = misclassified_grid(tmp_path / "errors.png", result, dataset, "single", names_with(COLOUR_NAMES))
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_parse_modes() -> None:
    assert parse_modes("ensemble, raw") == ("raw", "ensemble")
    with pytest.raises(ValueError, match="unknown prompt mode"):
        parse_modes("raw,fancy")


def _rank_with_margin(sorted_logits: torch.Tensor, wanted: int, margin: float = 0.02) -> int:
    """A rank near `wanted`, in the same top-1 / top-5 / miss band, whose score is clear of both neighbours."""
    band = range(0, 1) if wanted == 0 else range(1, 5) if wanted < 5 else range(5, 60)
    for rank in sorted(band, key=lambda r: abs(r - wanted)):
        above = sorted_logits[rank - 1] - sorted_logits[rank] if rank > 0 else margin
        below = sorted_logits[rank] - sorted_logits[rank + 1]
        if above >= margin and below >= margin:
            return rank
    raise AssertionError("no well-separated rank")


def test_same_numbers_as_clip_benchmark(tmp_path: Path, tiny_encoder: ClipEncoder) -> None:
    """CLIP_benchmark's zero-shot code on the same tiny CLIP, images and prompts: same top-1, top-5, recall.

    The labels are chosen so that the answer is not trivial: each image's true class is placed at a rank of
    0 (a top-1 hit), 1-4 (a top-5 hit) or beyond (a miss) of the tiny model's own ranking."""
    from torch.utils.data import DataLoader

    names = list(imagenet_classnames())
    with zeroshot_classification() as zsc:
        # 1. the text side: CLIP_benchmark's zero_shot_classifier equals ours (on 12 classes x 2 templates)
        subset = names[::83]
        theirs = zsc.zero_shot_classifier(tiny_encoder.model, tokenize, subset,
                                          [t.replace("{}", "{c}") for t in TEMPLATES[:2]], "cpu", amp=False)
        ours, _, _ = text_classifier(tiny_encoder, subset, TEMPLATES[:2], None, progress=False)
        assert torch.allclose(ours, theirs.float(), atol=1e-5)

        # 2. a data set whose labels sit at known ranks of the model's own scores
        staged = [write_noise_jpeg(tmp_path / "stage" / f"{i}.jpg", seed=100 + i) for i in range(12)]
        weights, _, _ = text_classifier(tiny_encoder, names, (SINGLE_TEMPLATE,), None, progress=False)
        logits = 100 * tiny_encoder.encode_images([open_image(p) for p in staged]) @ weights
        order = logits.argsort(dim=1, descending=True)
        sorted_logits = logits.sort(dim=1, descending=True).values
        wanted = [0, 2, 9, 0, 4, 30, 0, 1, 0, 3, 12, 0]
        ranks = [_rank_with_margin(sorted_logits[i], w) for i, w in enumerate(wanted)]
        samples = [Sample(i + 1, imagenet_wnids()[int(order[i, r])], (0, 0, 0)) for i, r in enumerate(ranks)]
        root = tmp_path / "tv"
        for sample, source in zip(samples, staged):
            target = root / "val" / sample.wnid / f"{sample.name}.JPEG"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
        dataset = read_imagenet(root)

        # 3. our pipeline
        result = evaluate_model(tiny_encoder, dataset, ("single",), batch_size=5, workers=0, progress=False)
        metrics = result.modes["single"].metrics

        # 4. CLIP_benchmark's evaluate(): its own image encoding, classification and metrics
        class Images(torch.utils.data.Dataset):
            classes = names

            def __len__(self) -> int:
                return len(dataset)

            def __getitem__(self, i: int):
                from PIL import Image

                with Image.open(dataset.files[i]) as image:
                    return tiny_encoder.preprocess(image.convert("RGB")), dataset.labels[i]

        torch.save(weights, tmp_path / "classifier.pt")
        reference = zsc.evaluate(tiny_encoder.model, DataLoader(Images(), batch_size=5), tokenize, names,
                                 ["a photo of a {c}."], "cpu", amp=False, load_clfs=[str(tmp_path / "classifier.pt")])

    expected_top1 = sum(r == 0 for r in ranks) / 12
    expected_top5 = sum(r < 5 for r in ranks) / 12
    assert 0 < expected_top1 < expected_top5 < 1
    assert metrics["top1"] == pytest.approx(reference["acc1"]) == pytest.approx(expected_top1)
    assert metrics["top5"] == pytest.approx(reference["acc5"]) == pytest.approx(expected_top5)
    assert metrics["mean_per_class"] == pytest.approx(reference["mean_per_class_recall"])
