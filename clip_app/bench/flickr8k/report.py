"""Flickr8k results on disk: the JSON analysis and the Markdown report (published references beside ours)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from ..output import format_cell, markdown_table, slugify, write_text

REFERENCE_SOURCE = "CLIP_benchmark benchmark/benchmark.csv (OpenAI weights, Flickr8k test split, raw captions)"
#: published Recall@5 (fractions) by model; keys are slugify()'d model names
REFERENCES: dict[str, dict[str, float]] = {
    "vit-b-32": {"text_to_image": 0.8054, "image_to_text": 0.9140},
}
ARROWS = {"text_to_image": "text \u2192 image", "image_to_text": "image \u2192 text"}


def reference_for(name: str) -> dict[str, float] | None:
    """Published CLIP_benchmark Recall@5 for this model, or None when there is none to compare with."""
    return REFERENCES.get(slugify(name))


def write_json(path: Path, result: dict) -> Path:
    """Write the analysis atomically (temp file + rename); NaN becomes null."""
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return write_text(path, json.dumps(clean(result), indent=2, ensure_ascii=False) + "\n")


def _median(value: float | None) -> str | None:
    """A median rank as few digits as it needs ('1', '2.5'); None (a dash in the table) when there is none."""
    return None if value is None or not math.isfinite(value) else f"{value:g}"


def _table_lines(header: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 4) -> list[str]:
    """report.markdown_table as a list of lines (recalls with 4 decimals unless told)."""
    return markdown_table(header, rows, digits=digits).splitlines()


def recall_table(result: dict) -> list[str]:
    """Our R@1/5/10 and median rank per direction beside the published R@5."""
    reference = result.get("reference") or {}
    rows = []
    for direction, label in ARROWS.items():
        ours = result[direction]
        rows.append([label, ours["R@1"], ours["R@5"], ours["R@10"], _median(ours["median_rank"]),
                     reference.get(direction)])
    return _table_lines(["direction", "R@1", "R@5", "R@10", "median rank", "published R@5 (CLIP_benchmark)"], rows)


def prefix_table(prefixes: Sequence[dict]) -> list[str]:
    rows = [[f"`{p['prefix']!r}`"] + [p[d][f"R@{k}"] for d in ARROWS for k in (1, 5, 10)]
            + [_median(p["text_to_image"]["median_rank"]), _median(p["image_to_text"]["median_rank"])]
            for p in prefixes]
    return _table_lines(["prefix", "t\u2192i R@1", "t\u2192i R@5", "t\u2192i R@10", "i\u2192t R@1", "i\u2192t R@5",
                   "i\u2192t R@10", "t\u2192i median", "i\u2192t median"], rows)


def markdown_report(result: dict) -> str:
    """The per-model Markdown report."""
    lines = [f"# Flickr8k retrieval: {result['model']}", "",
             f"Split **{result['split']}** ({result['layout']} layout, split from {result['split_source']}): "
             f"{result['n_images']} images, {result['n_captions']} captions; device {result['device']}; "
             f"headline prefix `{result['prefix']!r}`.", "",
             "## Recall", ""]
    lines += recall_table(result)
    lines += ["", f"Published: {REFERENCE_SOURCE}. Ranks are 1-based; image \u2192 text counts a hit when any of the "
              "image's captions is in the top K.", "", "## Effect of the caption prefix", ""]
    lines += prefix_table(result["prefixes"])
    if result.get("gallery_size"):
        lines += ["", "## Recall against gallery size (random image subsets with their captions, mean \u00b1 std)",
                  ""]
        rows = [[r["size"], r["subsets"]]
                + [f"{format_cell(r[d][f'R@{k}'], 3)} \u00b1 {format_cell(r[d + '_std'][f'R@{k}'], 3)}"
                   for d in ARROWS for k in (1, 5, 10)]
                for r in result["gallery_size"]]
        lines += _table_lines(["images", "subsets", "t\u2192i R@1", "t\u2192i R@5", "t\u2192i R@10", "i\u2192t R@1",
                         "i\u2192t R@5", "i\u2192t R@10"], rows)
    if result.get("caption_length"):
        lines += ["", "## Text \u2192 image recall by caption length", ""]
        rows = [[r["words"], r["n_captions"], r["R@1"], r["R@5"], r["R@10"]]
                for r in result["caption_length"]]
        lines += _table_lines(["words", "captions", "R@1", "R@5", "R@10"], rows)
    lines += ["", "## Timings (seconds)", ""]
    lines += _table_lines(["stage", "seconds"], [[k, v] for k, v in result["timings"].items()], digits=3)
    if result.get("images_per_second"):
        lines += ["", f"Image loading + encoding: {result['images_per_second']:.1f} images/s."]
    cache = result.get("cache", {})
    lines += ["", f"Image features: cache {cache.get('images', '?')}; caption features: "
              + ", ".join(f"`{p!r}` {s}" for p, s in cache.get("texts", {}).items()) + ".", "", "## Figures", ""]
    lines += [f"- {label}: ![{label}]({name})" for label, name in result.get("figures", {}).items()]
    return "\n".join(lines) + "\n"


def summary_markdown(results: Sequence[dict]) -> str:
    """One row per model of this run (headline prefix), with the published R@5."""
    rows = []
    for r in results:
        reference = r.get("reference") or {}
        rows.append([r["model"], f"`{r['prefix']!r}`", r["text_to_image"]["R@1"], r["text_to_image"]["R@5"],
                     reference.get("text_to_image"), r["text_to_image"]["R@10"], r["image_to_text"]["R@1"],
                     r["image_to_text"]["R@5"], reference.get("image_to_text"), r["image_to_text"]["R@10"]])
    header = ["model", "prefix", "t\u2192i R@1", "t\u2192i R@5", "published", "t\u2192i R@10", "i\u2192t R@1",
              "i\u2192t R@5", "published", "i\u2192t R@10"]
    first = results[0] if results else {}
    intro = (f"# Flickr8k retrieval summary\n\nSplit {first.get('split', '?')}: {first.get('n_images', '?')} images, "
             f"{first.get('n_captions', '?')} captions. Published R@5: {REFERENCE_SOURCE}.\n\n")
    return intro + markdown_table(header, rows, digits=4)
