"""Generic benchmark outputs: file-name slugs, atomic text files, Markdown tables, a results.csv that only grows,
grouped bar charts and captioned image grids (matplotlib's Agg canvas: no display, no global pyplot state)."""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from pathlib import Path
from typing import Mapping, Sequence

from PIL import Image

from ..encoders import CHECKPOINT_SUFFIXES
from ..files import write_text_atomically

log = logging.getLogger(__name__)

MISSING = "–"


def slugify(name: str) -> str:
    """A file-name-safe lower-case slug: 'ViT-B/32' -> 'vit-b-32', 'ViT-L/14@336px' -> 'vit-l-14-336px'."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "model"


def model_slug(name: str) -> str:
    """A model's slug for file names: a checkpoint's suffix dropped, then slugify ('tiny-clip.pt' -> 'tiny-clip')."""
    suffix = Path(name).suffix
    return slugify(name[: -len(suffix)] if suffix.lower() in CHECKPOINT_SUFFIXES else name)


def write_text(path: Path, text: str) -> Path:
    """Write a UTF-8 text file atomically: see files.write_text_atomically."""
    return write_text_atomically(Path(path), text)


def format_cell(value: object, digits: int = 2) -> str:
    """A table cell: floats with `digits` decimals, None/NaN as a dash, text with '|' escaped."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 2,
                   align_right: Sequence[bool] | None = None) -> str:
    """A GitHub Markdown table; numbers right-aligned unless align_right says otherwise."""
    body = [[format_cell(v, digits) for v in row] for row in rows]
    if align_right is None:
        align_right = [bool(rows) and all(_is_number(row[i]) for row in rows) for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if right else "---" for right in align_right) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def _is_number(value: object) -> bool:
    if value is None or isinstance(value, (int, float)):
        return True
    try:
        float(str(value))
        return True
    except ValueError:
        return False


def append_csv(path: Path, rows: Sequence[Mapping[str, object]]) -> Path:
    """Append rows to a CSV file, creating it with a header; a row with new columns widens the header (the file
    is rewritten atomically with the union of columns, old rows keep empty cells)."""
    path = Path(path)
    if not rows:
        return path
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    old_rows: list[dict[str, str]] = []
    old_columns: list[str] = []
    if path.exists() and path.stat().st_size > 0:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            old_columns = list(reader.fieldnames or [])
            if any(c not in old_columns for c in columns):
                old_rows = list(reader)
    if old_columns and all(c in old_columns for c in columns):
        with open(path, "a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, fieldnames=old_columns).writerows(rows)
        return path
    header = old_columns + [c for c in columns if c not in old_columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(old_rows)
    writer.writerows(rows)
    return write_text(path, buffer.getvalue())


def grouped_bar_chart(path: Path, groups: Sequence[str], series: Sequence[str],
                      values: Mapping[tuple[str, str], float], *, ylabel: str, title: str,
                      references: Mapping[str, float] | None = None, reference_label: str = "published") -> Path:
    """A PNG bar chart: one cluster per group, one bar per series; values[(group, series)] (missing ones skipped);
    optional reference value per group drawn as a black tick across its cluster."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.5, 1.1 + 0.9 * len(groups) * max(1, len(series)) * 0.45), 3.8), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(series))
    for s, name in enumerate(series):
        xs = [g + (s - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ys = [values.get((group, name), math.nan) for group in groups]
        bars = ax.bar(xs, ys, width=width * 0.95, label=name)
        for bar, y in zip(bars, ys):
            if not math.isnan(y):
                ax.annotate(f"{y:.1f}", (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom",
                            fontsize=7, xytext=(0, 1), textcoords="offset points")
    labelled = False
    for g, group in enumerate(groups):
        ref = (references or {}).get(group)
        if ref is not None:
            ax.hlines(ref, g - 0.45, g + 0.45, colors="black", linestyles="--", linewidth=1.2,
                      label=None if labelled else reference_label)
            labelled = True
    finite = [v for v in list(values.values()) + list((references or {}).values()) if v is not None and
              not math.isnan(v)]
    ax.set_ylim(0, max(finite + [0.0]) * 1.15 or 1.0)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=15 if len(groups) > 3 else 0, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return Path(path)


def image_grid(path: Path, cells: Sequence[tuple[Image.Image, str]], *, columns: int = 4, title: str = "",
               cell_inches: float = 2.6) -> Path:
    """A PNG grid of images, each with a caption below it (a few short lines); an empty list gives a note."""
    from matplotlib.figure import Figure

    columns = max(1, min(columns, len(cells) or 1))
    rows = max(1, math.ceil(len(cells) / columns))
    fig = Figure(figsize=(cell_inches * columns, (cell_inches + 1.1) * rows + 0.4), dpi=100)
    if not cells:
        fig.text(0.5, 0.5, "nothing to show", ha="center", va="center")
    for i, (image, caption) in enumerate(cells):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(image)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(caption, fontsize=6.5, loc="left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return Path(path)
