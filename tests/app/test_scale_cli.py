"""The index CLI on a PostgreSQL library, and export between stores (verified by counts and checksums)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from clip_app.index import main
from clip_app.library.export import state_checksum
from clip_app.library.pg_companions import PgCompanions
from clip_app.library.pg_sql import PgTables
from clip_app.library.pg_store import PgTagFile
from clip_app.library.store import load_library
from clip_app.library.tags import TagFile
from tests.support.library_helpers import write_image


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_index_cli_on_postgresql_and_export_both_ways(tmp_path: Path, tiny_checkpoint: Path, pg_url: str,
                                                      capsys) -> None:
    model = ["--model", str(tiny_checkpoint), "--device", "cpu"]
    on_file = [*model, "--gallery", str(tmp_path / "gallery"), "--library", str(tmp_path / "lib.pth")]
    on_pg = [*model, "--gallery", str(tmp_path / "gallery"), "--library", pg_url]
    images = [write_image(tmp_path / "in" / f"{c}.png", c) for c in ("red", "green", "blue", "yellow")]
    assert _cli(capsys, *on_file, "add", *map(str, images))[0] == 0
    assert _cli(capsys, *on_file, "remove", "2")[0] == 0
    (tmp_path / "label_sets.json").write_text(json.dumps({"version": 1, "sets": {"pets": ["cat", "dog"]}}))
    assert _cli(capsys, *on_file, "tag", "pets")[0] == 0
    file_tags = (tmp_path / "lib.pth.tags").read_bytes()

    code, out, err = _cli(capsys, *on_file, "export", "--to", pg_url)
    assert code == 0, err
    assert "exported 3 images and 2 companion document(s) (label_sets, tags)" in out and "verified: 3 rows" in out
    companions = PgCompanions(PgTables(pg_url))
    assert companions.get_blob("tags")[0] == file_tags  # the tags, byte for byte, in the library's tables
    code, listed_pg, _ = _cli(capsys, *on_pg, "list", "--json")
    code, listed_file, _ = _cli(capsys, *on_file, "list", "--json")
    assert json.loads(listed_pg) == json.loads(listed_file)  # IDs, files, hashes, sizes, names, times
    assert companions.get_document("label_sets")["sets"]["pets"]["labels"] == ["cat", "dog"]
    code, out, _ = _cli(capsys, *on_pg, "check")
    assert code == 0 and out.strip().startswith("ok")
    code, stats, _ = _cli(capsys, *on_pg, "stats", "--json")
    stats = json.loads(stats)
    assert stats["next_id"] == 5 and stats["library_file"].startswith("postgresql://postgres:***@")
    assert stats["file_size"] > 0 and stats["count"] == 3

    code, _, err = _cli(capsys, *on_file, "export", "--to", pg_url)  # never into a library that holds rows
    assert code == 2 and "already holds 3 rows" in err

    write_image(tmp_path / "in" / "cyan.png", "cyan")
    assert _cli(capsys, *on_pg, "labels", "add", "toys", "ball, kite")[0] == 0  # label sets and tags of a
    assert _cli(capsys, *on_pg, "tag", "toys")[0] == 0  # postgresql:// library live in its tables, not in files
    assert _cli(capsys, *on_pg, "add", str(tmp_path / "in" / "cyan.png"))[0] == 0  # the tagged sets follow the add
    stored = PgTagFile(companions).load()
    assert stored["pets"].ids.tolist() == [1, 3, 4, 5] and stored["toys"].ids.tolist() == [1, 3, 4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery", "in", "label_sets.json", "lib.pth",
                                                         "lib.pth.journal", "lib.pth.lock", "lib.pth.tags"]
    assert not list(Path.cwd().glob("postgres*"))  # nothing written beside the URL taken for a path
    code, out, _ = _cli(capsys, *on_pg, "check")
    assert code == 0 and out.strip().startswith("ok")
    back = tmp_path / "back" / "lib.pth"
    code, out, err = _cli(capsys, *on_pg, "export", "--to", str(back))
    assert code == 0, err
    state, _ = load_library(back)
    assert state.ids.tolist() == [1, 3, 4, 5] and state.next_id == 6
    assert state_checksum(state) == state_checksum(PgTables(pg_url).load()[1])
    assert set(json.loads((back.parent / "label_sets.json").read_text())["sets"]) == {"pets", "toys"}
    assert (back.parent / "lib.pth.tags").read_bytes() == companions.get_blob("tags")[0]
    assert TagFile(back.parent / "lib.pth.tags").load()["toys"].labels == ("ball", "kite")


def test_a_bad_url_is_one_clear_line(tmp_path: Path, tiny_checkpoint: Path, capsys) -> None:
    code, _, err = _cli(capsys, "--model", str(tiny_checkpoint), "--gallery", str(tmp_path / "g"), "--library",
                        "postgresql://nobody@127.0.0.1:1/db", "list")
    assert code == 2 and err.startswith("error: cannot connect to the PostgreSQL library") and err.count("\n") == 1


def test_the_app_on_a_postgresql_library(tmp_path: Path, tiny_checkpoint: Path, pg_url: str) -> None:
    from clip_app.config import Settings
    from clip_app.library.pg_store import PgLabelSetStore, PostgresStore
    from clip_app.service import App

    settings = Settings(model=str(tiny_checkpoint), device="cpu", gallery_dir=tmp_path / "gallery",
                        library_file=pg_url)
    one, two = App.from_settings(settings), App.from_settings(settings)  # two app servers
    assert isinstance(one.library.store, PostgresStore) and isinstance(one.label_sets, PgLabelSetStore)
    image = write_image(tmp_path / "in" / "red.png", "red")
    assert [r.status for r in one.add_images([str(image)]).results] == ["added"]
    assert two.gallery_page(1).entries[0].id == 1 and two.stats().count == 1
    assert two.search_text("red", k=3).hits[0].entry.id == 1
    one.save_label_set("pets", "cat, dog")
    assert two.label_set("pets") == ["cat", "dog"]
    tagged = one.tag_library("pets")  # the tags: a blob in the library's tables, shared by both servers
    assert isinstance(two.tags.file, PgTagFile) and two.tags.path is None
    assert torch.equal(two.set_tags("pets").cosines, tagged.cosines)
    two.tags.file.companions.put_blob("tags", b"not a tags file")  # damaged: check reports it, repair rewrites it
    problems = one.check().problems
    assert [p.kind for p in problems] == ["tags"] and "cannot be read" in problems[0].detail
    assert any("damaged tags file" in a for a in one.repair().actions) and two.check().ok
    two.delete_image(1)
    assert one.stats().count == 0 and not (tmp_path / "gallery" / "000001.png").exists()


def test_the_scale_benchmark_runs_small(pg_server, capsys) -> None:
    """`python -m clip_app.bench scale --only pg` end to end at a small size (the figures in docs/scale.md are taken
    at 100,000 rows)."""
    from clip_app.bench.__main__ import main as bench

    assert bench(["scale", "--only", "pg", "--rows", "500", "--dim", "16", "--queries", "3", "--adds", "2",
                  "--postgres", pg_server.url, "--threads", "1"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["pg.export_detail"]["rows"] == 500 and figures["pg.recall"] == 1.0  # exact below HNSW's size
    assert figures["pg.add_one"]["n"] == 2 and figures["pg.store_append_one"]["n"] == 2
    assert set(figures["targets"]) == {"pg.search_hnsw_ms", "pg.recall", "pg.add_one_ms", "pg.export_s"}
