"""Flickr8k figures (matplotlib, Agg, no pyplot state): top-5 retrieval grids and the analysis plots."""

from __future__ import annotations

import logging
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from ...images import ImageError, open_image
from .data import Flickr8k
from .metrics import rank_gallery

log = logging.getLogger(__name__)

CORRECT = "#1a9850"
WRONG = "#d73027"
NEUTRAL = "#999999"
TOP = 5


@dataclass(frozen=True)
class Panel:
    """One cell of a grid: an image file or a caption, with a title and whether it is a correct answer."""

    kind: str  # "image" or "text"
    content: str | Path
    title: str = ""
    correct: bool | None = None  # None: the query itself


@dataclass(frozen=True)
class GridRow:
    label: str
    query: Panel
    results: list[Panel]
    extra: Panel | None = None  # the correct item when it is not among the results


def text_to_image_rows(data: Flickr8k, texts: torch.Tensor, images: torch.Tensor, queries: Sequence[int],
                       label: str, prefix: str = "") -> list[GridRow]:
    """Grid rows for caption queries: the caption, its top-5 images, and its own image if it is not among them."""
    rows = []
    for t in queries:
        order, scores = rank_gallery(texts[t], images)
        target = data.caption_image[t]
        rank = int((order == target).nonzero()[0, 0]) + 1
        results = [Panel("image", data.image_paths[i], f"#{k + 1}  {float(scores[i]):.3f}", i == target)
                   for k, i in enumerate(order[:TOP].tolist())]
        extra = None if rank <= TOP else Panel("image", data.image_paths[target],
                                              f"correct: rank {rank}  {float(scores[target]):.3f}", True)
        rows.append(GridRow(label, Panel("text", prefix + data.captions[t], f"{label}: caption {t}"), results, extra))
    return rows


def image_to_text_rows(data: Flickr8k, images: torch.Tensor, texts: torch.Tensor, queries: Sequence[int],
                       label: str, prefix: str = "") -> list[GridRow]:
    """Grid rows for image queries: the image, its top-5 captions, and its best caption if none is among them."""
    rows = []
    owner = torch.tensor(data.caption_image)
    for i in queries:
        order, scores = rank_gallery(images[i], texts)
        correct = owner[order] == i
        first = int(correct.nonzero()[0, 0])
        results = [Panel("text", prefix + data.captions[t], f"#{k + 1}  {float(scores[t]):.3f}", bool(correct[k]))
                   for k, t in enumerate(order[:TOP].tolist())]
        best = int(order[first])
        extra = None if first < TOP else Panel("text", prefix + data.captions[best],
                                               f"correct: rank {first + 1}  {float(scores[best]):.3f}", True)
        rows.append(GridRow(label, Panel("image", data.image_paths[i], f"{label}: {data.images[i]}"), results, extra))
    return rows


def _frame(ax, colour: str, width: float) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)


def _draw(ax, panel: Panel) -> None:
    if panel.kind == "image":
        try:
            image = open_image(panel.content).convert("RGB")
            image.thumbnail((256, 256))
            ax.imshow(np.asarray(image))
        except (ImageError, OSError) as exc:
            ax.text(0.5, 0.5, f"unreadable:\n{exc}", ha="center", va="center", fontsize=7, transform=ax.transAxes)
    else:
        ax.set_facecolor("#f7f7f7")
        ax.text(0.5, 0.5, textwrap.fill(str(panel.content), 26), ha="center", va="center", fontsize=8,
                transform=ax.transAxes)
    colour = NEUTRAL if panel.correct is None else (CORRECT if panel.correct else WRONG)
    _frame(ax, colour, 5 if panel.correct else 1.5)
    mark = "" if panel.correct is None else (" \u2713" if panel.correct else "")
    ax.set_title(panel.title + mark, fontsize=8, color=CORRECT if panel.correct else "black")


def draw_grid(path: Path, rows: Sequence[GridRow], title: str) -> Path:
    """One row per query: query | top-5 results (correct ones framed green) | the correct item if it was missed."""
    columns = 2 + TOP
    fig = Figure(figsize=(2.3 * columns, 2.4 * max(1, len(rows)) + 0.6))
    fig.suptitle(title, fontsize=11)
    for r, row in enumerate(rows):
        cells = [row.query, *row.results] + ([row.extra] if row.extra else [])
        for c, panel in enumerate(cells):
            column = c if c <= TOP else columns - 1
            _draw(fig.add_subplot(len(rows), columns, r * columns + column + 1), panel)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90)
    return path


def plot_gallery_size(path: Path, rows: Sequence[dict], title: str, ks: Sequence[int] = (1, 5, 10)) -> Path:
    """R@K (mean +- std over random subsets) against the number of images in the gallery, both directions."""
    fig = Figure(figsize=(10, 4))
    for n, direction in enumerate(("text_to_image", "image_to_text")):
        ax = fig.add_subplot(1, 2, n + 1)
        sizes = [row["size"] for row in rows]
        for k in ks:
            mean = [row[direction][f"R@{k}"] for row in rows]
            std = [row[f"{direction}_std"][f"R@{k}"] for row in rows]
            ax.errorbar(sizes, mean, yerr=std, marker="o", capsize=3, label=f"R@{k}")
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("gallery size (images)")
        ax.set_ylabel("recall")
        ax.set_title(direction.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_caption_length(path: Path, rows: Sequence[dict], title: str, ks: Sequence[int] = (1, 5)) -> Path:
    """Text-to-image R@K per caption word-count bucket, with the number of captions in each bucket."""
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(rows))
    width = 0.8 / len(ks)
    for n, k in enumerate(ks):
        ax.bar(x + (n - (len(ks) - 1) / 2) * width, [row[f"R@{k}"] for row in rows], width, label=f"R@{k}")
    ax.set_xticks(x, [f"{row['words']}\n(n={row['n_captions']})" for row in rows])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("caption length (words; n = captions)")
    ax.set_ylabel("text-to-image recall")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_prefixes(path: Path, results: Sequence[dict], title: str, ks: Sequence[int] = (1, 5, 10)) -> Path:
    """Recall@K of each caption prefix, one panel per direction."""
    fig = Figure(figsize=(10, 4))
    labels = [repr(r["prefix"]) for r in results]
    x = np.arange(len(ks))
    width = 0.8 / max(1, len(results))
    for n, direction in enumerate(("text_to_image", "image_to_text")):
        ax = fig.add_subplot(1, 2, n + 1)
        for j, (label, result) in enumerate(zip(labels, results)):
            ax.bar(x + (j - (len(results) - 1) / 2) * width, [result[direction][f"R@{k}"] for k in ks], width,
                   label=label)
        ax.set_xticks(x, [f"R@{k}" for k in ks])
        ax.set_ylim(0, 1.02)
        ax.set_title(direction.replace("_", " "))
        ax.legend(title="prefix", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
