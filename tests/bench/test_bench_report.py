"""Generic benchmark outputs: slugs, Markdown tables, a results.csv that only grows, charts and image grids;
and the feature cache's stored metadata."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from PIL import Image

from clip_app.bench.features import FeatureCache
from clip_app.bench.output import append_csv, grouped_bar_chart, image_grid, markdown_table, slugify, write_text

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_slugify() -> None:
    assert slugify("ViT-B/32") == "vit-b-32"
    assert slugify("ViT-L/14@336px") == "vit-l-14-336px"
    assert slugify("RN50x64") == "rn50x64"
    assert slugify("///") == "model"


def test_markdown_table_formats_numbers_dashes_and_pipes() -> None:
    text = markdown_table(["Model", "Top-1 %", "Paper"], [["a|b", 63.333, None], ["c", 7.0, 63.2]])
    lines = text.splitlines()
    assert lines[0] == "| Model | Top-1 % | Paper |"
    assert lines[1] == "|---|---:|---:|"
    assert lines[2] == "| a\\|b | 63.33 | – |"
    assert lines[3] == "| c | 7.00 | 63.20 |"


def test_append_csv_appends_and_widens_the_header(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    append_csv(path, [{"benchmark": "imagenet", "top1": 0.5}])
    append_csv(path, [{"benchmark": "imagenet", "top1": 0.6}])
    append_csv(path, [{"benchmark": "flickr8k", "recall@5": 0.8}])  # new column: old rows keep an empty cell
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["benchmark"] for r in rows] == ["imagenet", "imagenet", "flickr8k"]
    assert [r["top1"] for r in rows] == ["0.5", "0.6", ""]
    assert rows[2]["recall@5"] == "0.8" and rows[0]["recall@5"] == ""


def test_write_text_is_atomic_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = write_text(tmp_path / "sub" / "a.md", "hello\n")
    assert path.read_text() == "hello\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.md"]


def test_bar_chart_and_grid_are_png_files(tmp_path: Path) -> None:
    chart = grouped_bar_chart(tmp_path / "c.png", ["ViT-B/32", "RN50"], ["raw", "single", "ensemble"],
                              {("ViT-B/32", "raw"): 55.0, ("ViT-B/32", "ensemble"): 63.3, ("RN50", "single"): 58.0},
                              ylabel="top-1 (%)", title="t", references={"ViT-B/32": 63.2})
    assert chart.read_bytes()[:8] == PNG_MAGIC
    with Image.open(chart) as image:
        assert image.width > 300 and image.height > 200
    grid = image_grid(tmp_path / "g.png", [(Image.new("RGB", (30, 20), (200, 0, 0)), "true: x\n1. y 90%")] * 5,
                      columns=4, title="errors")
    assert grid.read_bytes()[:8] == PNG_MAGIC
    empty = image_grid(tmp_path / "e.png", [])
    assert empty.read_bytes()[:8] == PNG_MAGIC


def test_feature_cache_returns_the_metadata_saved_with_features(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    features = torch.randn(3, 4)
    cache.save("x", "k", features, meta={"image_encoding": 1.5})
    loaded, meta = cache.load_entry("x", "k")
    assert torch.equal(loaded, features) and meta == {"image_encoding": 1.5}
    assert torch.equal(cache.load("x", "k"), features)
    assert cache.load_entry("x", "other") is None
    cache.path("x", "k").write_bytes(b"damaged")
    assert cache.load_entry("x", "k") is None
