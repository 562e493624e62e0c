"""What only the PostgreSQL store has: bad URLs and databases refused fast and clearly, HNSW search, live sharing."""

from __future__ import annotations

import multiprocessing
import time
import uuid
from pathlib import Path

import pytest
import torch

import clip_app.library.pg_sql as pg_sql
from clip_app.library import LibraryCorruptError
from clip_app.library.pg_sql import PgTables, StoreConnectionError, parse_url
from clip_app.library.state import LibraryState
from clip_app.search import top_k
from tests.support.library_helpers import image_bytes
from tests.support.pg_server import free_port
from tests.support.store_helpers import child_add_later, open_at


def test_url_parsing() -> None:
    location = parse_url("postgresql://me:pw@db.example:5433/photos?table=lib_2&sslmode=require")
    assert location.table == "lib_2" and "table=" not in location.dsn and "sslmode=require" in location.dsn
    assert "connect_timeout=5" in location.dsn and location.shown == "postgresql://me:***@db.example:5433/photos?" \
        "table=lib_2&sslmode=require"
    assert parse_url("postgres://u@h/db").table == pg_sql.DEFAULT_TABLE
    with pytest.raises(ValueError, match="table name"):
        parse_url("postgresql://u@h/db?table=Robert');DROP")


def _refused(url: str, tmp_path: Path, error=StoreConnectionError, match: str = "") -> str:
    started = time.monotonic()
    with pytest.raises(error, match=match) as caught:
        open_at(tmp_path / "gallery", url)
    assert time.monotonic() - started < 6
    assert not (tmp_path / "gallery").exists()  # nothing written
    return str(caught.value)


def test_unreachable_wrong_password_and_missing_database_are_clear(pg_server, tmp_path: Path) -> None:
    message = _refused(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", tmp_path, match="cannot connect")
    assert "nothing was written" in message
    bad_password = pg_server.url.replace("clip-test-secret", "wrong")
    message = _refused(bad_password, tmp_path, match="password")
    assert "wrong" not in message and "***" in message  # the password is never shown
    _refused(pg_server.url.rsplit("/", 1)[0] + "/no_such_db", tmp_path, match="does not exist")


def test_a_database_without_pgvector_says_how_to_enable_it(pg_server, tmp_path: Path) -> None:
    name = f"novec_{uuid.uuid4().hex[:8]}"
    pg_server.psql(f"CREATE DATABASE {name}")
    url = pg_server.url.rsplit("/", 1)[0] + f"/{name}"
    _refused(url, tmp_path, match="CREATE EXTENSION vector")
    import psycopg

    with psycopg.connect(url) as conn:  # nothing was created there
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0


def test_a_table_of_another_width_or_not_a_library_is_refused(pg_server, pg_url: str, tmp_path: Path,
                                                              colour_encoder) -> None:
    store = PgTables(pg_url)
    store.create(colour_encoder.identity, colour_encoder.name, 7)
    _refused(pg_url, tmp_path, LibraryCorruptError, match="7-d features")
    assert store.count() == 0 and store.meta().dim == 7
    table = f"plain_{uuid.uuid4().hex[:8]}"
    pg_server.psql(f"CREATE TABLE {table} (x int)")
    _refused(pg_server.database_url(table), tmp_path, LibraryCorruptError, match="not a clip-app library")


def _random_state(n: int, dim: int, seed: int = 0) -> LibraryState:
    """n clustered unit rows (like photo features: groups of similar images)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(20, dim, generator=generator), dim=1)
    rows = centres[torch.randint(0, 20, (n,), generator=generator)] + 0.35 * torch.randn(n, dim, generator=generator)
    rows = torch.nn.functional.normalize(rows, dim=1)
    return LibraryState.build("synthetic", "synthetic", dim, ids=torch.arange(1, n + 1), features=rows,
                              files=[f"{i:06d}.png" for i in range(1, n + 1)],
                              sha256=[f"{i:064x}" for i in range(1, n + 1)],
                              added=torch.full((n,), 1.7e9, dtype=torch.float64),
                              sizes=torch.full((n,), 100, dtype=torch.int64), names=["x"] * n, next_id=n + 1)


def test_hnsw_above_the_threshold_and_exact_search_equal_to_the_file_store(pg_url: str, monkeypatch) -> None:
    monkeypatch.setattr(pg_sql, "HNSW_MIN_ROWS", 300)
    state = _random_state(600, 32)
    store = PgTables(pg_url)
    store.create("synthetic", "synthetic", 32)
    with store.writing():
        store.apply(model="synthetic", model_name="synthetic", dim=32, next_id=601, rows=state.reordered(
            torch.arange(0, 200)))
    assert not store.has_index()  # 200 rows: a scan
    with store.writing():
        store.apply(model="synthetic", model_name="synthetic", dim=32, next_id=601,
                    rows=state.reordered(torch.arange(200, 600)))
    assert store.has_index() and store.count() == 600
    generator = torch.Generator().manual_seed(1)
    hits = total = 0
    for _ in range(20):
        query = torch.nn.functional.normalize(torch.randn(32, generator=generator), dim=0)
        exact_ids, exact_scores = store.search(query, 12, exact=True)
        scores, rows = top_k(query, state.features16, state.ids, 12)
        assert exact_ids == state.ids[rows].tolist()  # the file store's answer, same scores
        assert torch.allclose(torch.tensor(exact_scores), scores, atol=1e-6)
        ann_ids, _ = store.search(query, 12)
        hits += len(set(ann_ids) & set(exact_ids))
        total += 12
    assert hits / total >= 0.9
    _, loaded, _ = store.load()
    assert torch.equal(loaded.features16, state.features16) and loaded.sha256 == state.sha256


def test_an_add_in_one_process_is_found_by_a_search_in_another_within_a_second(pg_url: str, tmp_path: Path,
                                                                               colour_encoder) -> None:
    gallery = tmp_path / "gallery"
    library = open_at(gallery, pg_url, colour_encoder)
    library.add([(image_bytes("red"), "r.png")])
    context = multiprocessing.get_context("fork")
    go, queue = context.Event(), context.Queue()
    child = context.Process(target=child_add_later, args=(str(gallery), pg_url, (20, 20, 220), go, queue))
    child.start()
    assert queue.get(timeout=120) == "ready"
    query = colour_encoder.encode_texts(["blue"])[0]
    assert library.search(query, 1)[0][0].id == 1
    go.set()
    new_id = queue.get(timeout=60)
    committed = time.monotonic()
    while library.search(query, 1)[0][0].id != new_id:
        assert time.monotonic() - committed < 1.0
        time.sleep(0.01)
    child.join(30)
    assert child.exitcode == 0 and library.get(new_id).file == f"{new_id:06d}.png"


def test_with_the_hnsw_index_the_library_gives_the_file_stores_answers(pg_url: str, tmp_path: Path, colour_encoder,
                                                                        monkeypatch) -> None:
    monkeypatch.setattr(pg_sql, "HNSW_MIN_ROWS", 4)
    colours = ["red", "green", "blue", "yellow", "cyan", "magenta"]
    library = open_at(tmp_path / "g1", pg_url, colour_encoder)
    reference = open_at(tmp_path / "g2", tmp_path / "lib.pth", colour_encoder)
    for lib in (library, reference):
        lib.add([(image_bytes(c), f"{c}.png") for c in colours])
    assert library.store.tables.has_index()
    for text in ("blue", "a magenta or red thing"):
        query = colour_encoder.encode_texts([text])[0]
        got = [(e.id, round(s, 5)) for e, s in library.search(query, 4)]
        assert got == [(e.id, round(s, 5)) for e, s in reference.search(query, 4)]
    near = [library.add([(image_bytes("blue", "JPEG", (40, 30)), "b.jpg")]).results[0],
            reference.add([(image_bytes("blue", "JPEG", (40, 30)), "b.jpg")]).results[0]]
    assert near[0].near_duplicate_of == near[1].near_duplicate_of == 3
    assert near[0].similarity == pytest.approx(near[1].similarity, abs=1e-4)
