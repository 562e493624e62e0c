"""ImageNet benchmark outputs: per-model JSON and log, results.csv rows, a Markdown table with the published
numbers, a bar chart of models x prompt modes and a grid of misclassified images with their top-5."""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from ...images import ImageError, open_image
from ..output import grouped_bar_chart, image_grid, markdown_table, model_slug, write_text
from .data import ImagenetSet
from .evaluate import MODE_HELP, MODES, ModelResult

log = logging.getLogger(__name__)

#: Published zero-shot ImageNet-1k numbers (percent), all with the 80-template ensemble and curated class names.
#: paper: Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision";
#: clip_benchmark: LAION-AI/CLIP_benchmark, benchmark/benchmark.csv (model ViT-B-32, pretrained openai).
#: Other models are left blank on purpose: only numbers we could check are printed.
PUBLISHED: dict[str, dict[str, float]] = {
    "ViT-B/32": {"paper_top1": 63.2, "clip_benchmark_top1": 63.33, "clip_benchmark_top5": 88.78},
    "RN50x64": {"paper_top1": 73.6},
}
SUMMARY_NAME = "imagenet.md"
CHART_NAME = "imagenet-top1.png"


def published_for(model: str) -> dict[str, float]:
    """The published reference numbers (percent) of an official model name, or {}; open_clip models get their
    family's own figure (open_clip's results table, encoders.families.PUBLISHED_TOP1) as `family_top1`."""
    from ...encoders.families import PUBLISHED_TOP1

    found = dict(PUBLISHED.get(model, {}))
    if model in PUBLISHED_TOP1:
        found["family_top1"] = PUBLISHED_TOP1[model]
    return found


def output_stem(model: str) -> str:
    """'imagenet-<model slug>' (a checkpoint file's suffix dropped)."""
    return f"imagenet-{model_slug(model)}"


def model_record(result: ModelResult, dataset: ImagenetSet, limit: int | None) -> dict:
    """The JSON document of one model: settings, data set, image stage and one entry per prompt mode."""
    prompts = {}
    for mode, r in result.modes.items():
        spi = result.seconds_per_image(mode)
        prompts[mode] = {
            **{k: r.metrics[k] for k in ("top1", "top5", "mean_per_class")},
            "n_images": result.n_images,
            "n_templates": r.n_templates,
            "seconds_per_image": spi,
            "images_per_second": 1.0 / spi if spi > 0 else None,
            "text_features_cached": r.text_cached,
            "timings": result.mode_timings(mode),
        }
    return {
        "benchmark": "imagenet",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "units": "accuracies are fractions in [0, 1]; times are seconds",
        "model": result.model,
        "model_identity": result.identity,
        "device": result.device,
        "dtype": result.dtype,
        "batch_size": result.batch_size,
        "workers": result.workers,
        "dataset": {"root": str(dataset.root), "layout": dataset.layout, "n_images": len(dataset),
                    "n_classes": len(dataset.classes_present), "limit": limit,
                    "raw_names_source": dataset.raw_names_source},
        "image_features_cached": result.image_features_cached,
        "image_stage": {"data_loading": result.data_loading, "image_encoding": result.image_encoding,
                        "images_per_second": _finite(result.image_throughput)},
        "prompts": prompts,
        "published": published_for(result.model),
    }


def csv_rows(record: dict) -> list[dict[str, object]]:
    """One results.csv row per prompt mode of a model record."""
    rows = []
    published = record["published"]
    for mode, p in record["prompts"].items():
        rows.append({
            "created": record["created"], "benchmark": "imagenet", "model": record["model"],
            "model_identity": record["model_identity"], "device": record["device"], "dtype": record["dtype"],
            "prompts": mode, "layout": record["dataset"]["layout"], "n_images": p["n_images"],
            "n_classes": record["dataset"]["n_classes"], "limit": record["dataset"]["limit"] or "",
            "top1": f"{p['top1']:.6f}", "top5": f"{p['top5']:.6f}", "mean_per_class": f"{p['mean_per_class']:.6f}",
            "seconds_per_image": f"{p['seconds_per_image']:.6g}",
            "images_per_second": f"{p['images_per_second']:.6g}" if p["images_per_second"] else "",
            **{f"{k}_s": f"{v:.4f}" for k, v in p["timings"].items()},
            "image_features_cached": record["image_features_cached"],
            "published_paper_top1": published.get("paper_top1", ""),
            "published_clip_benchmark_top1": published.get("clip_benchmark_top1", ""),
            "published_clip_benchmark_top5": published.get("clip_benchmark_top5", ""),
        })
    return rows


def log_text(record: dict) -> str:
    """A plain-text log in the seed report's style (TOP 1 Accuracy, TOP 5 Accuracy, Averaged Time)."""
    d, stage = record["dataset"], record["image_stage"]
    cached = " (image features from the cache; times of the run that computed them)" \
        if record["image_features_cached"] else ""
    lines = [
        f"=== ImageNet zero-shot: {record['model']} ({record['device']}, {record['dtype']}, batch "
        f"{record['batch_size']}, {record['workers']} workers) ===",
        f"Data: {d['layout']} layout in {d['root']}: {d['n_images']} images of {d['n_classes']} classes"
        + (f" (--limit {d['limit']})" if d["limit"] else ""),
        f"Image stage: data loading {stage['data_loading']:.2f} s, image encoding {stage['image_encoding']:.2f} s, "
        f"{_fmt(stage['images_per_second'], '.1f')} images/s{cached}",
    ]
    for mode, p in record["prompts"].items():
        t = p["timings"]
        lines += [
            f"--- prompts: {mode}: {MODE_HELP[mode]} ({p['n_templates']} template(s)) ---",
            f"TOP 1 Accuracy: {100 * p['top1']:.2f}%",
            f"TOP 5 Accuracy: {100 * p['top5']:.2f}%",
            f"Mean per-class recall: {100 * p['mean_per_class']:.2f}%",
            f"Text encoding: {t['text_encoding']:.2f} s" + (" (from the cache)" if p["text_features_cached"] else ""),
            f"Averaged Time: {p['seconds_per_image']:.5f} s/image ({_fmt(p['images_per_second'], '.1f')} images/s; "
            f"data loading {t['data_loading']:.2f} s + image encoding {t['image_encoding']:.2f} s + text encoding "
            f"{t['text_encoding']:.2f} s + classification {t['classification']:.2f} s over {p['n_images']} images)",
        ]
    if record["published"]:
        lines.append("Published (80 templates, curated names): " + _published_text(record["published"]))
    if record["dataset"]["raw_names_source"] and "raw" in record["prompts"]:
        lines.append(f"raw prompts from: {record['dataset']['raw_names_source']}")
    return "\n".join(lines) + "\n"


def load_records(out: Path) -> list[dict]:
    """Every imagenet-*.json in the output folder (one per model, the latest run of each), by model name."""
    records = []
    for path in sorted(Path(out).glob("imagenet-*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("skipping unreadable %s (%s)", path, exc)
            continue
        if record.get("benchmark") == "imagenet":
            records.append(record)
    return sorted(records, key=lambda r: r["model"])


def summary_markdown(records: Sequence[dict]) -> str:
    """A Markdown table of every model and prompt mode, with the published numbers beside ours (percent)."""
    headers = ["Model", "Prompts", "Images", "Top-1 %", "Top-5 %", "Mean per-class %", "Paper top-1 %",
               "CLIP_benchmark top-1 %", "CLIP_benchmark top-5 %", "Family's top-1 %", "s/image", "images/s",
               "Device"]
    rows = []
    for record in records:
        pub = record.get("published", {})
        for mode in MODES:
            p = record["prompts"].get(mode)
            if p is None:
                continue
            rows.append([record["model"], mode, p["n_images"], 100 * p["top1"], 100 * p["top5"],
                         100 * p["mean_per_class"], pub.get("paper_top1"), pub.get("clip_benchmark_top1"),
                         pub.get("clip_benchmark_top5"), pub.get("family_top1"), _sig(p["seconds_per_image"]),
                         _sig(p["images_per_second"]), f"{record['device']} {record['dtype']}"])
    notes = (
        "\nPublished numbers use the 80-template ensemble with the curated class names (our `ensemble` row) on all "
        "50,000 validation images: CLIP paper (Radford et al., 2021), CLIP_benchmark (benchmark/benchmark.csv) and, "
        "for open_clip models, open_clip's results table (docs/openclip_results.csv, column ImageNet 1k). "
        "A dash means no published number we could check. `raw` = WordNet words as the text, `single` = "
        "'a photo of a {}.' with the curated names. Rows with fewer than 50,000 images (--limit, partial data) "
        "are not comparable to the published numbers. s/image covers data loading, image encoding, text encoding "
        "and classification.\n")
    return "# ImageNet-1k zero-shot\n\n" + markdown_table(headers, rows, digits=2) + notes


def write_summary(out: Path) -> tuple[Path, Path]:
    """Rewrite imagenet.md and imagenet-top1.png from every model JSON in `out`."""
    records = load_records(out)
    md = write_text(Path(out) / SUMMARY_NAME, summary_markdown(records))
    models = [r["model"] for r in records]
    modes = [m for m in MODES if any(m in r["prompts"] for r in records)]
    values = {(r["model"], m): 100 * r["prompts"][m]["top1"] for r in records for m in r["prompts"]}
    refs = {r["model"]: r["published"].get("paper_top1", r["published"].get("clip_benchmark_top1",
                                                                             r["published"].get("family_top1")))
            for r in records if r.get("published")}
    chart = grouped_bar_chart(Path(out) / CHART_NAME, models, modes, values, ylabel="top-1 accuracy (%)",
                              title="ImageNet-1k zero-shot top-1 by prompt mode",
                              references={k: v for k, v in refs.items() if v is not None},
                              reference_label="published (CLIP paper, or the family's table)")
    return md, chart


def misclassified_grid(path: Path, result: ModelResult, dataset: ImagenetSet, mode: str, names: Sequence[str],
                       count: int = 16) -> Path:
    """A PNG grid of up to `count` misclassified images (spread over the set) with their true class and top-5."""
    r = result.modes[mode]
    wrong = [i for i in range(len(dataset)) if int(r.top_classes[i, 0]) != dataset.labels[i]]
    step = max(1, len(wrong) / max(count, 1))
    chosen = [wrong[int(k * step)] for k in range(min(count, len(wrong)))]
    cells = []
    for i in chosen:
        try:
            image = open_image(dataset.files[i])
        except ImageError as exc:
            log.warning("misclassified grid: %s", exc)
            continue
        image.thumbnail((224, 224))
        lines = [f"{Path(dataset.files[i]).name}", f"true: {_short(names[dataset.labels[i]])}"]
        for rank, (cls, prob) in enumerate(zip(r.top_classes[i].tolist(), r.top_probs[i].tolist()), 1):
            mark = "*" if cls == dataset.labels[i] else " "
            lines.append(f"{rank}.{mark}{_short(names[cls])} {100 * prob:.0f}%")
        cells.append((image, "\n".join(lines)))
    title = (f"{result.model}, prompts '{mode}': {len(wrong)} of {len(dataset)} misclassified "
             f"(top-5 shown, * = true class)")
    return image_grid(path, cells, columns=4, title=title)


def _published_text(published: dict[str, float]) -> str:
    parts = []
    if "paper_top1" in published:
        parts.append(f"CLIP paper top-1 {published['paper_top1']:.1f}%")
    if "clip_benchmark_top1" in published:
        parts.append(f"CLIP_benchmark top-1 {published['clip_benchmark_top1']:.2f}%, top-5 "
                     f"{published['clip_benchmark_top5']:.2f}%")
    return "; ".join(parts)


def _short(text: str, limit: int = 26) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _finite(value: float) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _sig(value: float | None) -> str | None:
    return None if value is None else f"{value:.4g}"


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)
