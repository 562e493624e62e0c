"""`python -m clip_app.bench perf`: the harness runs end to end at tiny sizes (tiny checkpoint) and writes every
figure; no timing is asserted (the numbers depend on the machine)."""

import json

import clip
import pytest
import torch

from clip_app.bench.__main__ import build_parser
from clip_app.bench.perf.cli import parse_sizes, targets
from clip_app.bench.perf.setup import ARCHITECTURES, random_checkpoint, unit_features, write_photos
from clip_app.bench.perf.stats import Figure, Target, counting, format_value

SIZES = (300, 3000)


@pytest.fixture(scope="module")
def perf_run(tiny_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("perf")
    out = folder / "perf.json"
    parser, modules = build_parser()
    args = parser.parse_args(["perf", "--quick", "--model", str(tiny_checkpoint), "--sizes",
                              ",".join(map(str, SIZES)), "--workdir", str(folder / "work"), "--json", str(out),
                              "--only", "forward,index,classify,search,library,tags,app,page"])  # backends: own test
    status = modules["perf"].run(args)
    return status, json.loads(out.read_text())


def test_harness_runs_every_section(perf_run):
    status, data = perf_run
    assert status == 0
    assert set(data) == {"meta", "figures", "targets", "pending", "facts"}
    assert data["pending"] == {}  # library, App and app.py are all in this build
    meta = data["meta"]
    assert meta["random_weights"] is False and meta["quick"] is True
    assert meta["sizes"] == list(SIZES)
    assert len(meta["load_average_start"]) == 3 and len(meta["load_average_end"]) == 3


def test_every_figure_is_a_positive_summary(perf_run):
    figures = perf_run[1]["figures"]
    assert figures
    for key, fig in figures.items():
        assert fig["n"] == len(fig["values"]) >= 1, key
        assert all(v > 0 for v in fig["values"]), key
        assert 0 < fig["min"] <= fig["q1"] <= fig["median"] <= fig["q3"] <= fig["max"], key
        assert fig["unit"] in {"s", "img/s", "x", "MB", "count"}, key


def test_the_issue_figures_are_there(perf_run):
    figures = perf_run[1]["figures"]
    big = max(SIZES)
    expected = ["forward.image.1", "forward.image.4", "forward.text.1", "index.small.library_add.rate",
                "index.small.library_add.ratio", "index.small.library_add.share", "index.large.decode_encode.share",
                "index.large.decode_encode.ratio",
                "index.large.decode_encode_draft.ratio", "index.large.library_add.ratio", "classify.cached",
                "classify.cached.ratio", "classify.cached.in_run", "classify.first.single", "classify.first.ensemble",
                "search.encode_text",
                f"library.add_one.{big}", f"library.add_one.forward.{big}", f"library.bulk_add.{big}",
                f"library.search.{big}", f"library.load.{big}", f"library.rss.{big}", "app.cold_start.ready",
                "app.cold_start.server", "app.cold_start.first_answer", f"search.parts.scan16.{big}",
                f"search.parts.scan32.{big}", f"search.parts.rescore.{big}", f"search.parts.select.{big}"]
    expected += [f"tags.compute.{big}", f"tags.tag_and_save.{big}", f"tags.list.{big}", f"tags.list_entries.{big}",
                 f"search.plain.{big}", f"search.confidence.{big}", f"search.confidence.{big}.ratio"]
    expected += [f"search.{kind}.{n}" for n in SIZES for kind in ("topk", "topk_float32", "query")]
    expected += [f"search.query.{n}.{kind}" for n in SIZES for kind in ("ratio", "in_run")]
    expected += [f"app.page.{kind}" for kind in ("bytes.full", "bytes.thumbs", "bytes.ratio", "seconds.full",
                                                 "seconds.thumbs_first", "seconds.thumbs", "seconds.ratio")]
    assert [key for key in expected if key not in figures] == []
    assert figures[f"library.bulk_add.saves.{big}"]["values"] == [1.0]  # one save for a bulk add


def test_targets_are_all_decided(perf_run):
    checks = perf_run[1]["targets"]
    assert len(checks) == 11  # the six of the performance issue, the gallery page's two, the tags issue's three
    for check in checks:
        assert check["value"] is not None and isinstance(check["met"], bool), check


def test_architecture_table_matches_the_published_parameter_counts():
    counts = {"ViT-B/32": 151_277_313, "RN50": 102_007_137}  # as the CLIP notebooks print them
    for name, expected in counts.items():
        with torch.device("meta"):
            model = clip.model.CLIP(*ARCHITECTURES[name])
        assert sum(p.numel() for p in model.parameters()) == expected, name


def test_unknown_architecture_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no architecture table"):
        random_checkpoint("ViT-X/99", tmp_path / "x.pt")


def test_inputs_are_distinct_photos_and_unit_rows(tmp_path):
    paths = write_photos(tmp_path, 3, (64, 48), seed=1)
    assert len({p.read_bytes() for p in paths}) == 3  # distinct bytes: no duplicate detection kicks in
    rows = unit_features(1000, 16, seed=2, chunk=300)
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(1000))
    assert torch.equal(rows, unit_features(1000, 16, seed=2, chunk=300))


def test_figure_summary_and_targets():
    fig = Figure("k", "label", "s", [0.3, 0.1, 0.2, 0.4])
    assert fig.median == pytest.approx(0.25) and fig.low == 0.1 and fig.high == 0.4
    assert fig.quartiles() == (pytest.approx(0.175), pytest.approx(0.325))
    assert Target("t", "k", "<=", 0.3, value=0.25).met is True
    assert Target("t", "k", ">=", 0.9, value=0.85).met is False
    assert Target("t", "k", ">=", 0.9).met is None
    assert format_value(0.0123, "s") == "12.3 ms" and format_value(2.5, "s") == "2.50 s"
    assert [t.key for t in targets([1000, 100_000], 100_000, "library_add")][2] == "search.topk.100000"


def test_sizes_are_parsed_and_checked():
    assert parse_sizes("10000,1000,1_000") == [1000, 10000]
    for bad in ("", "a,b", "0,10"):
        with pytest.raises(ValueError):
            parse_sizes(bad)


class Worker:
    def work(self, x):
        return x + 1


def test_counting_counts_and_restores():
    worker, totals = Worker(), {}
    with counting(worker, "work", totals):
        assert worker.work(1) == 2 and worker.work(2) == 3
    assert totals["calls"] == 2 and totals["seconds"] >= 0
    assert "work" not in vars(worker) and worker.work(5) == 6  # the class method again
    import clip_app.bench.perf.setup as module

    original, seen = module.query_text, {}
    with counting(module, "query_text", seen):
        module.query_text(3)
    assert module.query_text is original and seen["calls"] == 1
