"""Few-shot outputs: fewshot-<model>.json, fewshot.md (every model in the folder, the published anchors beside)
and fewshot-<model>.png (top-1 against shots per method, mean +- std over seeds)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from ..output import markdown_table, model_slug, write_text

log = logging.getLogger(__name__)

SUMMARY_NAME = "fewshot.md"

#: Tip-Adapter's published ImageNet numbers (RN50, top-1 %), from the authors' own log: R. Zhang et al.,
#: "Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification", ECCV 2022 (arXiv:2207.09519),
#: https://github.com/gaopengcuhk/Tip-Adapter. Their code tunes alpha/beta on the test features; ours does not.
PUBLISHED = {
    "model": "RN50",
    "dataset": "ImageNet",
    "source": "Tip-Adapter (Zhang et al., ECCV 2022, arXiv:2207.09519), the authors' log",
    "rows": {
        "zero-shot CLIP": {"0": 60.32},
        "Tip-Adapter (training-free)": {"1": 60.70, "16": 62.01},
        "Tip-Adapter-F (fine-tuned cache)": {"16": 65.51},
        "CLIP-Adapter": {"16": 63.59},
    },
}


def output_stem(model: str) -> str:
    """'fewshot-<model slug>': the file name of one model's JSON and plot."""
    return f"fewshot-{model_slug(model)}"


def write_record(out: Path, record: dict) -> Path:
    """fewshot-<model>.json."""
    return write_text(Path(out) / f"{output_stem(record['model'])}.json", json.dumps(record, indent=2) + "\n")


def load_records(out: Path) -> list[dict]:
    """Every fewshot-*.json in `out` (unreadable ones skipped with a warning), by model name."""
    records = []
    for path in sorted(Path(out).glob("fewshot-*.json")):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            log.warning("skipping %s (%s)", path, exc)
    return sorted(records, key=lambda r: r.get("model", ""))


def _cell(entry: dict | None) -> str:
    if not entry:
        return "–"
    return f"{100 * entry['mean']:.2f} ± {100 * entry['std']:.2f}"


def model_table(record: dict) -> str:
    """Markdown: one row per method, one column per shot count (top-1 %, mean ± std over seeds)."""
    shots = sorted({int(k) for cells in record["methods"].values() for k in cells})
    headers = ["method"] + [f"{k}-shot" for k in shots]
    rows = [[method] + [_cell(cells.get(str(k))) for k in shots] for method, cells in record["methods"].items()]
    return markdown_table(headers, rows, align_right=[False] + [True] * len(shots))


def published_table() -> str:
    """Markdown: the published anchors (top-1 %) by shot count."""
    shots = sorted({int(k) for values in PUBLISHED["rows"].values() for k in values})
    headers = [f"published ({PUBLISHED['model']}, {PUBLISHED['dataset']})"] + [
        "zero-shot" if k == 0 else f"{k}-shot" for k in shots]
    rows = [[name] + [f"{values[str(k)]:.2f}" if str(k) in values else "–" for k in shots]
            for name, values in PUBLISHED["rows"].items()]
    return markdown_table(headers, rows, align_right=[False] + [True] * len(shots))


def summary_markdown(records: list[dict]) -> str:
    """fewshot.md: per model, the data set, zero-shot top-1 and the method x shots table with the anchors."""
    lines = ["# Few-shot top-1 (%)", "",
             "Mean ± standard deviation over seeds; k examples per class drawn from train, scored on all of val. "
             "Hyper-parameters are chosen on the shots only (leave-one-out / k-fold), never on val. Published rows: "
             f"{PUBLISHED['source']}, {PUBLISHED['model']} on {PUBLISHED['dataset']} (their code tunes on the test "
             "set; compare only like with like).", "", published_table()]
    for record in records:
        data = record["dataset"]
        lines += [f"## {record['model']} on {data['name']}", "",
                  f"{record['n_classes']} classes, {record['n_val']} val images; zero-shot top-1 "
                  f"{100 * record['zero_shot']['top1']:.2f}%; seeds {record['seeds']}; adaptation "
                  f"{record['timings'].get('adaptation', 0.0):.1f} s.", "", model_table(record)]
    return "\n".join(lines) + "\n"


def write_plot(path: Path, record: dict) -> Path:
    """PNG: top-1 (%) against shots (log2 axis), one line per method with mean ± std error bars; zero-shot dashed;
    the published anchors as crosses when the data set is ImageNet."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    for method, cells in record["methods"].items():
        if method == "zeroshot":
            continue
        ks = sorted(int(k) for k in cells)
        ax.errorbar(ks, [100 * cells[str(k)]["mean"] for k in ks], yerr=[100 * cells[str(k)]["std"] for k in ks],
                    marker="o", capsize=3, label=method)
    ax.axhline(100 * record["zero_shot"]["top1"], color="grey", linestyle="--", label="zero-shot")
    if record["dataset"]["name"] == "imagenet":
        for name, values in PUBLISHED["rows"].items():
            points = [(int(k), v) for k, v in values.items() if k != "0"]
            if points:
                ax.scatter([k for k, _ in points], [v for _, v in points], marker="x", label=f"published: {name}")
    ax.set_xscale("log", base=2)
    shots = sorted({int(k) for cells in record["methods"].values() for k in cells})
    ax.set_xticks(shots)
    ax.set_xticklabels([str(k) for k in shots])
    ax.set_xlabel("examples per class (shots)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{record['model']} on {record['dataset']['name']}: few-shot top-1", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return Path(path)


def write_summary(out: Path) -> Path:
    """Rewrite fewshot.md from every fewshot-*.json in `out`."""
    return write_text(Path(out) / SUMMARY_NAME, summary_markdown(load_records(out)))


def finite(value: float) -> float | None:
    """JSON-safe: NaN/inf as None."""
    return value if math.isfinite(value) else None
