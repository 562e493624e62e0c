"""ImageNet zero-shot evaluation of one model: images encoded once (cached on disk), every prompt mode scored."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from tqdm import tqdm

from ...classify import build_classifier, cosines, probabilities
from ...encoders import ClipEncoder
from ...prompts import SINGLE_TEMPLATE, family_prompts, family_templates
from ..features import FeatureCache, cached_image_features, text_features_key
from .data import ImagenetSet
from .metrics import classification_metrics

log = logging.getLogger(__name__)

#: prompt modes, in the order they are run and reported
MODES = ("raw", "single", "ensemble")
MODE_HELP = {
    "raw": "WordNet words of each class as the whole text (what a naive run does)",
    "single": f"'{SINGLE_TEMPLATE}' with the curated class names",
    "ensemble": "the CLIP paper's 80 templates with the curated class names, averaged",
}
TOP_K = 5


@dataclass
class ModeResult:
    """Scores of one prompt mode: metrics (fractions), timings (seconds) and each image's top-5."""

    mode: str
    metrics: dict[str, float]
    n_templates: int
    text_seconds: float
    classify_seconds: float
    text_cached: bool
    top_classes: torch.Tensor  # [N, 5] class indices, best first
    top_probs: torch.Tensor  # [N, 5] softmax probabilities over the 1000 classes


@dataclass
class ModelResult:
    """One model on one data set: the image stage (once) and every prompt mode."""

    model: str
    identity: str
    device: str
    dtype: str
    batch_size: int
    workers: int
    n_images: int
    data_loading: float
    image_encoding: float
    image_features_cached: bool
    modes: dict[str, ModeResult] = field(default_factory=dict)

    def mode_timings(self, mode: str) -> dict[str, float]:
        """Seconds per stage for one mode (image stage as measured when the features were computed)."""
        r = self.modes[mode]
        stages = {"data_loading": self.data_loading, "image_encoding": self.image_encoding,
                  "text_encoding": r.text_seconds, "classification": r.classify_seconds}
        stages["total"] = sum(stages.values())
        return stages

    def seconds_per_image(self, mode: str) -> float:
        """Whole pipeline of one mode (load, encode images, encode texts, classify) divided by the images."""
        return self.mode_timings(mode)["total"] / max(self.n_images, 1)

    @property
    def image_throughput(self) -> float:
        """Images per second of the image stage alone (data loading + image encoding)."""
        seconds = self.data_loading + self.image_encoding
        return self.n_images / seconds if seconds > 0 else float("nan")


def parse_modes(text: str) -> tuple[str, ...]:
    """'raw,single' -> ('raw', 'single') in the canonical order; ValueError on an unknown mode."""
    wanted = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = sorted(set(wanted) - set(MODES))
    if unknown or not wanted:
        raise ValueError(f"unknown prompt mode(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(MODES)}")
    return tuple(m for m in MODES if m in wanted)


def mode_prompts(mode: str, curated: Sequence[str], raw: Sequence[str], templates: Sequence[str],
                 single: str = SINGLE_TEMPLATE) -> tuple[list[str], tuple[str, ...]]:
    """(class texts, templates with '{}') for a prompt mode."""
    if mode == "raw":
        return list(raw), ("{}",)
    if mode == "single":
        return list(curated), (single,)
    if mode == "ensemble":
        return list(curated), tuple(templates)
    raise ValueError(f"unknown prompt mode {mode!r}")


def image_features(encoder: ClipEncoder, dataset: ImagenetSet, cache: FeatureCache | None, *, batch_size: int,
                   workers: int, progress: bool = True) -> tuple[torch.Tensor, dict, bool]:
    """Unit image features [N, D] of the data set's files, from the cache or encoded (then cached).

    Returns (features, {'data_loading': s, 'image_encoding': s} of the run that encoded them, cached?)."""
    found = cached_image_features(encoder, dataset.files, cache, label="imagenet-images", batch_size=batch_size,
                                  workers=workers, desc=f"{encoder.name}: images", progress=progress)
    return found.features, found.seconds, found.cached


def text_classifier(encoder: ClipEncoder, names: Sequence[str], templates: Sequence[str],
                    cache: FeatureCache | None, *, progress: bool = True,
                    desc: str = "texts") -> tuple[torch.Tensor, float, bool]:
    """Zero-shot weights [D, C] (templates averaged per class), from the cache or encoded; (weights, s, cached?).

    The seconds are those of the run that encoded the texts."""
    key = text_features_key(encoder, names, purpose=json.dumps(["imagenet-classifier", list(templates)]))
    if cache is not None:
        entry = cache.load_entry("imagenet-text", key)
        if entry is not None and entry[0].shape[1] == len(names):
            return entry[0], float(entry[1].get("text_encoding", 0.0)), True
    chunk = max(1, 2048 // len(templates))
    start = time.perf_counter()
    columns = []
    with tqdm(total=len(names), desc=desc, unit="class", disable=not progress) as bar:
        for i in range(0, len(names), chunk):
            columns.append(build_classifier(encoder, names[i:i + chunk], templates))
            bar.update(len(names[i:i + chunk]))
    weights = torch.cat(columns, dim=1)
    seconds = time.perf_counter() - start
    if cache is not None:
        cache.save("imagenet-text", key, weights, meta={"text_encoding": seconds, "model": encoder.identity,
                                                       "n_classes": len(names), "n_templates": len(templates)})
    return weights, seconds, False


def score_mode(features: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> tuple[dict, torch.Tensor,
                                                                                                torch.Tensor]:
    """Metrics and top-5 (classes, probabilities) of image features [N, D] against class weights [D, C]."""
    cos = cosines(features, weights)  # [N, C]
    metrics = classification_metrics(cos, labels)
    probs = probabilities(cos)  # softmax over the classes of LOGIT_SCALE * cos
    best = torch.topk(probs, min(TOP_K, probs.shape[1]), dim=1)
    return metrics, best.indices, best.values


def evaluate_model(encoder: ClipEncoder, dataset: ImagenetSet, modes: Sequence[str], *,
                   cache: FeatureCache | None = None, batch_size: int = 64, workers: int = 2,
                   curated_names: Sequence[str] | None = None, raw_names: Sequence[str] | None = None,
                   templates: Sequence[str] | None = None, progress: bool = True) -> ModelResult:
    """Encode the images once, then score each prompt mode against all 1000 classes.

    curated_names / raw_names / templates default to the package's curated names, the data set's WordNet words
    and the 80 CLIP templates (tests inject their own)."""
    family_names, family_ensemble, source = family_prompts(encoder.family)
    curated = list(curated_names or family_names)
    raw = list(raw_names or dataset.raw_names)
    templates = tuple(templates or family_ensemble)
    single = family_templates("single", encoder.family)[0]
    if encoder.family != "clip" and not curated_names:
        log.info("%s: class names and templates of the %s family (%s)", encoder.name, encoder.family, source)
    if len(curated) != len(raw):
        raise ValueError(f"{len(curated)} curated names but {len(raw)} raw names")
    features, seconds, cached = image_features(encoder, dataset, cache, batch_size=batch_size, workers=workers,
                                               progress=progress)
    labels = torch.tensor(dataset.labels, dtype=torch.long)
    result = ModelResult(model=encoder.name, identity=encoder.identity, device=str(encoder.device),
                         dtype=str(encoder.dtype).replace("torch.", ""), batch_size=batch_size, workers=workers,
                         n_images=len(dataset), data_loading=seconds["data_loading"],
                         image_encoding=seconds["image_encoding"], image_features_cached=cached)
    for mode in modes:
        names, mode_templates = mode_prompts(mode, curated, raw, templates, single)
        weights, text_seconds, text_cached = text_classifier(encoder, names, mode_templates, cache,
                                                             progress=progress, desc=f"{encoder.name}: {mode} texts")
        start = time.perf_counter()
        metrics, top_classes, top_probs = score_mode(features, labels, weights)
        result.modes[mode] = ModeResult(mode, metrics, len(mode_templates), text_seconds,
                                        time.perf_counter() - start, text_cached, top_classes, top_probs)
        log.info("%s %s: top-1 %.2f%% top-5 %.2f%% (%d images)", encoder.name, mode, 100 * metrics["top1"],
                 100 * metrics["top5"], len(dataset))
    return result
