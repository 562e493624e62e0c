"""The SQL side of the PostgreSQL + pgvector store (pg_store.PostgresStore): URL, connections, tables, COPY, search.

    <table>         id bigint PRIMARY KEY, feature halfvec(D), file text UNIQUE, sha256 bytea UNIQUE, size bigint,
                    name text, added double precision (unix time), version bigint (the write that stored the row)
    <table>_removed id, version: IDs removed (or rewritten) by each write, so readers catch up without a full read
    <table>_meta    one row: format, model, model_name, dim, next_id, version (grows with every write), generation
                    (new when the whole table is replaced: rebuild)
    <table>_docs    name text PRIMARY KEY, body jsonb: companion documents (label sets); <table>_blobs: binary ones
                    (tags); see pg_companions.py

Writers take a session advisory lock (one writer across threads, processes and machines; released by the server
when a writer dies) and change rows in one transaction each: there is no journal. Readers use plain snapshots
(MVCC) and never wait for a writer. IDs come from `next_id`, which only grows. Search is exact (a scan) below
HNSW_MIN_ROWS rows; above, the store creates an HNSW index (halfvec_ip_ops) and sets `hnsw.ef_search` per query
for k. Either way the candidates are rescored in float32 exactly as the file store scores its float16 rows.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import torch

from ..search import HALF_SCORE_MARGIN, best_rows
from .errors import LibraryBusyError, LibraryCorruptError, LibraryError, LibraryWriteError
from .pg_vectors import Halfvec, halfvec_bytes, halfvec_rows, register_halfvec
from .state import FIRST_ID, LibraryState

log = logging.getLogger(__name__)

FORMAT = 1
DEFAULT_TABLE = "clip_library"
CONNECT_TIMEOUT_S = 5
HNSW_MIN_ROWS = 20_000  # below this a scan is fast and exact; above it the store keeps an HNSW index
HNSW_M, HNSW_EF_CONSTRUCTION = 16, 64
NEAREST_EF_SEARCH = 40  # the near-duplicate test looks for rows with cosine >= 0.97: easy for HNSW
INDEX_RECHECK_S = 10.0  # a reader that has not seen the HNSW index yet looks again after this many seconds
DOCS_COLUMNS = "(name text PRIMARY KEY, body jsonb NOT NULL, updated double precision NOT NULL)"  # <table>_docs
TABLE_SUFFIXES = ("", "_meta", "_docs", "_blobs", "_removed")  # every table of a library (pg_companions: docs, blobs)
SMALL_WRITE_ROWS = 32  # up to this many rows a write is one pipelined round trip; more go through COPY
_TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")
_URL_SCHEMES = ("postgresql://", "postgres://")
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
ENABLE_VECTOR = ("enable it once in that database as its owner or a superuser: `CREATE EXTENSION vector;` (the "
                 "pgvector package must be installed on the server: https://github.com/pgvector/pgvector)")


class StoreConnectionError(LibraryError):
    """The PostgreSQL server cannot be reached, refused the login, or lacks what the store needs."""


def is_database_url(value: object) -> bool:
    """True for a postgresql:// (or postgres://) URL."""
    return isinstance(value, str) and value.strip().lower().startswith(_URL_SCHEMES)


@dataclass(frozen=True)
class PgLocation:
    """A parsed `postgresql://USER@HOST:PORT/DB[?table=NAME]`: the libpq URL (without `table`) and the table."""

    url: str  # as given (for messages and commands, password masked by `shown`)
    dsn: str  # what libpq connects to
    table: str

    @property
    def shown(self) -> str:
        """The URL with any password replaced by ***."""
        return re.sub(r"(//[^:/@]+:)[^@]*@", r"\1***@", self.url)


def parse_url(url: str) -> PgLocation:
    """Split off ?table=NAME (default clip_library); ValueError for a URL that is not postgresql:// or a bad name."""
    url = url.strip()
    if not is_database_url(url):
        raise ValueError(f"{url!r} is not a postgresql:// URL")
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    tables = [v for k, v in query if k == "table"]
    table = tables[-1] if tables else DEFAULT_TABLE
    if not _TABLE_NAME.match(table):
        raise ValueError(f"table name {table!r} in {url!r}: use lower-case letters, digits and _ (at most 48)")
    rest = [(k, v) for k, v in query if k != "table"]
    if not any(k == "connect_timeout" for k, _ in rest):
        rest.append(("connect_timeout", str(CONNECT_TIMEOUT_S)))
    dsn = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), ""))
    return PgLocation(url=url, dsn=dsn, table=table)


def _connect(location: PgLocation, autocommit: bool = True) -> Any:
    """A psycopg connection; StoreConnectionError (at once, or after CONNECT_TIMEOUT_S) when it cannot be made."""
    try:
        import psycopg
    except ImportError as exc:
        raise StoreConnectionError("a postgresql:// library needs psycopg: pip install 'clip-app[scale]' (or "
                                   "pip install 'psycopg[binary]')") from exc
    try:
        return psycopg.connect(location.dsn, autocommit=autocommit)
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())
        hint = ""
        if "password" in reason or "authentication" in reason:
            hint = " (check the user and password: in the URL, in PGPASSWORD or in ~/.pgpass)"
        elif "does not exist" in reason:
            hint = " (create the database first: createdb, or CREATE DATABASE)"
        raise StoreConnectionError(f"cannot connect to the PostgreSQL library {location.shown}: {reason}{hint}; "
                                   "nothing was written") from None


@dataclass
class Meta:
    """The metadata row."""

    model: str
    model_name: str
    dim: int
    next_id: int
    version: int
    generation: str = ""


class PgTables:
    """One library table set in PostgreSQL (see the module doc). Thread-safe: each thread reads on its own
    connection; the writer has its own."""

    def __init__(self, url: str, lock_timeout: float = 300.0) -> None:
        self.location = parse_url(url)
        self.table = self.location.table
        self.lock_timeout = float(lock_timeout)
        self._local = threading.local()
        self._connections: list[Any] = []
        self._connections_lock = threading.Lock()
        self._writer: Any = None
        self._write_mutex = threading.Lock()
        self._hnsw_checked = False
        self._index_seen, self._index_checked = False, -1e9
        self._check_server()

    # ---- connections ------------------------------------------------------------------------------------------
    def _reader(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = _connect(self.location)
            register_halfvec(conn)
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection of this store."""
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._local = threading.local()

    def _check_server(self) -> None:
        """Connect once; StoreConnectionError when pgvector is not enabled in the database (nothing is written)."""
        conn = self._reader()
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        if row is None:
            available = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone()
            database = conn.info.dbname
            if available:
                raise StoreConnectionError(f"the database {database!r} ({self.location.shown}) does not have the "
                                           f"pgvector extension enabled; {ENABLE_VECTOR}. Nothing was written.")
            raise StoreConnectionError(f"the PostgreSQL server of {self.location.shown} has no pgvector extension "
                                       "installed; install pgvector on the server, then " + ENABLE_VECTOR[0].lower()
                                       + ENABLE_VECTOR[1:] + ". Nothing was written.")

    # ---- schema and metadata ------------------------------------------------------------------------------------
    def meta(self) -> Meta | None:
        """The metadata row, or None when the library's tables do not exist yet; LibraryCorruptError when the table
        exists but is not a clip-app library."""
        import psycopg

        conn = self._reader()
        try:
            row = conn.execute(f"SELECT format, model, model_name, dim, next_id, version, generation FROM "
                               f"{self.table}_meta").fetchone()
        except psycopg.errors.UndefinedTable:
            if conn.execute("SELECT to_regclass(%s)", (self.table,)).fetchone()[0] is None:
                return None
            raise LibraryCorruptError(f"the table {self.table!r} in {self.location.shown} is not a clip-app library "
                                      f"(it has no {self.table}_meta table); choose another with ?table=NAME. "
                                      "Nothing was written.") from None
        if row is None or row[0] > FORMAT:
            raise LibraryCorruptError(f"the library table {self.table!r} in {self.location.shown} has no valid "
                                      "metadata row (or a newer format); nothing was written.")
        return Meta(model=row[1], model_name=row[2], dim=int(row[3]), next_id=int(row[4]), version=int(row[5]),
                    generation=row[6])

    def create(self, model: str, model_name: str, dim: int, next_id: int = FIRST_ID) -> None:
        """Create the tables for this model (in one transaction); nothing when they exist already."""
        with self._transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"clip_app:create:{self.table}",))
            if conn.execute("SELECT to_regclass(%s)", (f"{self.table}_meta",)).fetchone()[0] is not None:
                return
            self._create_tables(conn, dim)
            conn.execute(f"CREATE TABLE {self.table}_meta (format int NOT NULL, model text NOT NULL, "
                         "model_name text NOT NULL, dim int NOT NULL, next_id bigint NOT NULL, "
                         "version bigint NOT NULL, generation text NOT NULL)")
            conn.execute(f"INSERT INTO {self.table}_meta (format, model, model_name, dim, next_id, version, "
                         "generation) VALUES (%s, %s, %s, %s, %s, 0, %s)",
                         (FORMAT, model, model_name, int(dim), int(next_id), uuid.uuid4().hex))
            conn.execute(f"CREATE TABLE IF NOT EXISTS {self.table}_docs {DOCS_COLUMNS}")
        log.info("created the library table %s (%d-d features of %s) in %s", self.table, dim, model,
                 self.location.shown)

    def _create_tables(self, conn: Any, dim: int) -> None:
        """The rows table (for this width) and the removal log, empty."""
        conn.execute(f"CREATE TABLE {self.table} (id bigint PRIMARY KEY, feature halfvec({int(dim)}) NOT NULL, "
                     "file text NOT NULL UNIQUE, sha256 bytea NOT NULL UNIQUE, size bigint NOT NULL, "
                     "name text NOT NULL, added double precision NOT NULL, version bigint NOT NULL)")
        conn.execute(f"CREATE INDEX {self.table}_version ON {self.table} (version)")
        conn.execute(f"DROP TABLE IF EXISTS {self.table}_removed")
        conn.execute(f"CREATE TABLE {self.table}_removed (id bigint NOT NULL, version bigint NOT NULL)")
        conn.execute(f"CREATE INDEX {self.table}_removed_version ON {self.table}_removed (version)")

    @contextmanager
    def _transaction(self, conn: Any = None) -> Iterator[Any]:
        conn = conn if conn is not None else self._writer_connection()
        with conn.transaction():
            yield conn

    def _writer_connection(self) -> Any:
        if self._writer is None or self._writer.closed:
            self._writer = _connect(self.location)
            register_halfvec(self._writer)
        return self._writer

    # ---- the write section ------------------------------------------------------------------------------------
    @contextmanager
    def writing(self) -> Iterator[Meta | None]:
        """One writer at a time across threads and processes (a session advisory lock; the server releases it when
        a writer dies); yields the metadata as of the lock (None before create()). LibraryBusyError after
        lock_timeout seconds."""
        import psycopg

        with self._write_mutex:
            conn = self._writer_connection()
            key = f"clip_app:write:{self.table}"
            deadline = time.monotonic() + self.lock_timeout
            while True:
                lock, meta = conn.cursor(), conn.cursor()
                try:
                    with conn.pipeline():  # one round trip: the lock, then the metadata (valid once it is held)
                        lock.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,))
                        meta.execute(f"SELECT model, model_name, dim, next_id, version, generation FROM "
                                     f"{self.table}_meta")
                except psycopg.errors.UndefinedTable:  # no tables (yet, or dropped): the lock, then no metadata
                    conn.execute("SELECT pg_advisory_unlock_all()")
                    row = None
                    if conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()[0]:
                        break
                else:
                    row = meta.fetchone()
                    if lock.fetchone()[0]:
                        break
                if time.monotonic() > deadline:
                    raise LibraryBusyError(f"the library {self.location.shown} is being written by another process "
                                           f"(advisory lock held for over {self.lock_timeout:.0f} s); try again later")
                time.sleep(0.05)
            try:
                yield None if row is None else Meta(row[0], row[1], int(row[2]), int(row[3]), int(row[4]), row[5])
            finally:
                if not conn.closed:
                    conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))

    def _meta_on(self, conn: Any) -> Meta | None:
        import psycopg

        try:
            row = conn.execute(f"SELECT model, model_name, dim, next_id, version, generation FROM {self.table}_meta"
                               ).fetchone()
        except psycopg.errors.UndefinedTable:
            return None
        return None if row is None else Meta(row[0], row[1], int(row[2]), int(row[3]), int(row[4]), row[5])

    def apply(self, *, model: str, model_name: str, dim: int, next_id: int, remove: Sequence[int] = (),
              rows: LibraryState | None = None, replace_all: bool = False, index: bool = True) -> int:
        """In one transaction: delete these IDs (or every row with replace_all, also re-typing the feature column for
        dim), insert the rows of `rows` (a state holding only the rows to write; a changed row is removed and
        inserted), set the metadata. Call inside
        writing(). Returns the new version; LibraryWriteError (nothing changed) on any failure. index: create the
        HNSW index afterwards when the table has grown past HNSW_MIN_ROWS (export builds it after verifying)."""
        import psycopg

        if not replace_all and (rows is None or len(rows) <= SMALL_WRITE_ROWS):
            return self._apply_small(model, model_name, dim, next_id, remove, rows, index)
        try:
            with self._transaction() as conn:
                version = int(conn.execute(
                    f"UPDATE {self.table}_meta SET model = %s, model_name = %s, dim = %s, next_id = GREATEST(next_id, "
                    "%s), version = version + 1, generation = CASE WHEN %s THEN %s ELSE generation END RETURNING "
                    "version", (model, model_name, int(dim), int(next_id), replace_all, uuid.uuid4().hex)
                ).fetchone()[0])
                if replace_all:
                    conn.execute(f"DROP TABLE IF EXISTS {self.table}")
                    self._create_tables(conn, dim)
                    self._hnsw_checked = self._index_seen = False
                elif remove:
                    gone = [int(i) for i in remove]
                    conn.execute(f"DELETE FROM {self.table} WHERE id = ANY(%s)", (gone,))
                    conn.execute(f"INSERT INTO {self.table}_removed (id, version) SELECT unnest(%s::bigint[]), %s",
                                 (gone, version))
                if rows is not None and len(rows):
                    self._copy_rows(conn, rows, version)
        except psycopg.Error as exc:
            raise self._write_error(exc) from exc
        if index:
            self.ensure_index()
        return int(version)

    def _write_error(self, exc: Exception) -> LibraryWriteError:
        """The LibraryWriteError (nothing was written) for a failed write: a duplicate image, or any other error."""
        import psycopg

        if isinstance(exc, psycopg.errors.UniqueViolation):
            return LibraryWriteError(f"the library {self.location.shown} already holds one of these images (same "
                                     f"sha256 or file): {exc.diag.message_detail or exc}; nothing was written")
        return LibraryWriteError(f"could not write to the library {self.location.shown} ({exc}); nothing was "
                                 "written")

    def _apply_small(self, model: str, model_name: str, dim: int, next_id: int, remove: Sequence[int],
                     rows: LibraryState | None, index: bool) -> int:
        """apply() for a few rows (an add, a remove): the whole transaction in one round trip (pipeline mode)."""
        import psycopg

        meta = f"{self.table}_meta"
        conn = self._writer_connection()
        cur = conn.cursor()
        try:
            with conn.pipeline(), conn.transaction():
                cur.execute(f"UPDATE {meta} SET model = %s, model_name = %s, dim = %s, next_id = GREATEST(next_id, "
                            "%s), version = version + 1 RETURNING version", (model, model_name, int(dim),
                                                                              int(next_id)))
                if remove:
                    gone = [int(i) for i in remove]
                    conn.execute(f"DELETE FROM {self.table} WHERE id = ANY(%s)", (gone,))
                    conn.execute(f"INSERT INTO {self.table}_removed (id, version) SELECT unnest(%s::bigint[]), "
                                 f"(SELECT version FROM {meta})", (gone,))
                if rows is not None and len(rows):
                    vectors = [Halfvec(row) for row in rows.features16]
                    conn.cursor().executemany(
                        f"INSERT INTO {self.table} (id, feature, file, sha256, size, name, added, version) VALUES "
                        f"(%s, %b, %s, %s, %s, %s, %s, (SELECT version FROM {meta}))",
                        [(int(image_id), vectors[i], rows.files[i], rows.sha256.digest(i), int(size),
                          rows.names[i], float(added)) for i, (image_id, size, added) in
                         enumerate(zip(rows.ids.tolist(), rows.sizes.tolist(), rows.added.tolist()))])
            version = int(cur.fetchone()[0])
        except psycopg.Error as exc:
            raise self._write_error(exc) from exc
        if index:
            self.ensure_index()
        return version

    def _copy_rows(self, conn: Any, state: LibraryState, version: int) -> None:
        """COPY the rows of a state in (binary format: the float16 rows go as they are)."""
        vectors = halfvec_bytes(state.features16.numpy())
        pack_q, pack_d = struct.Struct("!iq").pack, struct.Struct("!id").pack
        stamp = pack_q(8, int(version))
        parts = [_COPY_HEADER]
        for i in range(len(state)):
            file, name = state.files[i].encode(), state.names[i].encode()
            parts.append(b"".join((
                struct.pack("!h", 8), pack_q(8, int(state.ids[i])), struct.pack("!i", len(vectors[i])), vectors[i],
                struct.pack("!i", len(file)), file, struct.pack("!i", 32), state.sha256.digest(i),
                pack_q(8, int(state.sizes[i])),
                struct.pack("!i", len(name)), name, pack_d(8, float(state.added[i])), stamp)))
        parts.append(struct.pack("!h", -1))
        with conn.cursor().copy(f"COPY {self.table} (id, feature, file, sha256, size, name, added, version) FROM "
                                "STDIN (FORMAT BINARY)") as copy:
            copy.write(b"".join(parts))

    def ensure_index(self) -> None:
        """Create the HNSW index once the table holds HNSW_MIN_ROWS rows (kept by PostgreSQL from then on)."""
        if self._hnsw_checked:
            return
        conn = self._writer_connection()
        if self.count() < HNSW_MIN_ROWS:
            return
        if conn.execute("SELECT to_regclass(%s)", (f"{self.table}_hnsw",)).fetchone()[0] is None:
            started = time.perf_counter()
            conn.execute("SET maintenance_work_mem = '1GB'")
            conn.execute(f"CREATE INDEX IF NOT EXISTS {self.table}_hnsw ON {self.table} USING hnsw "
                         f"(feature halfvec_ip_ops) WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})")
            conn.execute("RESET maintenance_work_mem")
            log.info("created the HNSW index of %s in %.1f s", self.table, time.perf_counter() - started)
        self._hnsw_checked = self._index_seen = True

    # ---- reading ----------------------------------------------------------------------------------------------
    def count(self) -> int:
        """Rows in the library."""
        return int(self._reader().execute(f"SELECT count(*) FROM {self.table}").fetchone()[0])

    def version(self) -> int:
        """Grows with every write (readers reload their copy of the state when it changed)."""
        return int(self._reader().execute(f"SELECT version FROM {self.table}_meta").fetchone()[0])

    def load(self, since: int | None = None) -> tuple[Meta, LibraryState, list[int]]:
        """(metadata, rows, removed IDs) read in one snapshot: every row (since=None), or the rows stored and the IDs
        removed by writes after version `since` (a rewritten row is in both)."""
        conn = self._reader()
        cur = conn.cursor(binary=True)
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            row = conn.execute(f"SELECT model, model_name, dim, next_id, version, generation FROM {self.table}_meta"
                               ).fetchone()
            where = "" if since is None else f"WHERE version > {int(since)}"
            cur.execute(f"SELECT id, feature, file, sha256, size, name, added FROM {self.table} {where} ORDER BY id")
            rows = cur.fetchall()
            removed = [] if since is None else [int(r[0]) for r in conn.execute(
                f"SELECT id FROM {self.table}_removed WHERE version > %s", (int(since),)).fetchall()]
        meta = Meta(row[0], row[1], int(row[2]), int(row[3]), int(row[4]), row[5])
        state = LibraryState.build(
            meta.model, meta.model_name, meta.dim, ids=torch.tensor([r[0] for r in rows], dtype=torch.int64),
            features=halfvec_rows([r[1] for r in rows], meta.dim), files=[r[2] for r in rows],
            sha256=[bytes(r[3]).hex() for r in rows], added=torch.tensor([r[6] for r in rows], dtype=torch.float64),
            sizes=torch.tensor([r[4] for r in rows], dtype=torch.int64), names=[r[5] for r in rows],
            next_id=meta.next_id)
        return meta, state, removed

    def entries(self, where: str, params: Sequence[Any] = (), tail: str = "") -> list[tuple]:
        """(id, file, sha256 hex, added, size, name) rows matching an SQL condition."""
        rows = self._reader().execute(f"SELECT id, file, sha256, added, size, name FROM {self.table} WHERE {where} "
                                      f"{tail}", tuple(params)).fetchall()
        return [(int(r[0]), r[1], bytes(r[2]).hex(), float(r[3]), int(r[4]), r[5]) for r in rows]

    def find_sha256(self, sha256: str) -> int | None:
        """The ID of the row with these bytes, or None."""
        row = self._reader().execute(f"SELECT id FROM {self.table} WHERE sha256 = %s",
                                     (bytes.fromhex(sha256),)).fetchone()
        return None if row is None else int(row[0])

    def known_hashes(self, sha256: Sequence[str]) -> dict[str, int]:
        """sha256 -> ID for those of these hashes that the library holds."""
        if not sha256:
            return {}
        rows = self._reader().execute(f"SELECT sha256, id FROM {self.table} WHERE sha256 = ANY(%s)",
                                      ([bytes.fromhex(h) for h in sha256],)).fetchall()
        return {bytes(r[0]).hex(): int(r[1]) for r in rows}

    def has_index(self, max_age: float = 0.0) -> bool:
        """True when the HNSW index exists (once seen it stays; a 'no' is trusted for max_age seconds)."""
        if self._index_seen or time.monotonic() - self._index_checked < max_age:
            return self._index_seen
        found = self._reader().execute("SELECT to_regclass(%s)", (f"{self.table}_hnsw",)).fetchone()[0]
        self._index_seen, self._index_checked = found is not None, time.monotonic()
        return self._index_seen

    def search(self, query: torch.Tensor, k: int, exact: bool | None = None,
               ef_search: int | None = None) -> tuple[list[int], list[float]]:
        """(IDs, scores) of the k best rows for a unit query [D], best first, ties to the lower ID; scores are
        float32 dot products with the stored float16 rows (as the file store's). exact=None: HNSW when the index
        exists; exact=True: a scan with every row that can be in the top k rescored (the file store's answer)."""
        found = self.search_entries(query, k, exact, ef_search)
        return [e[0] for e, _ in found], [score for _, score in found]

    def search_entries(self, query: torch.Tensor, k: int, exact: bool | None = None,
                       ef_search: int | None = None) -> list[tuple[tuple, float]]:
        """search() with each hit's (id, file, sha256 hex, added, size, name), in the same query."""
        k = int(k)
        if k <= 0:
            return []
        query = query.float().reshape(-1)
        vector = Halfvec(query)
        use_index = self.has_index(max_age=INDEX_RECHECK_S) if exact is None else not exact
        conn = self._reader()
        fetch = k + max(16, k)
        while True:
            cur = conn.cursor(binary=True)
            with conn.pipeline(), conn.transaction():  # one round trip: BEGIN, the setting, the query, COMMIT
                if use_index:
                    conn.execute("SELECT set_config('hnsw.ef_search', %s, true)",
                                 (str(ef_search or ef_search_for(k)),))
                else:
                    conn.execute("SET LOCAL enable_indexscan = off")
                cur.execute(f"SELECT id, feature, -(feature <#> %b), file, sha256, added, size, name "
                            f"FROM {self.table} ORDER BY feature <#> %b LIMIT %s", (vector, vector, fetch))
            rows = cur.fetchall()
            if use_index or len(rows) < fetch:
                break
            kth = float(rows[k - 1][2]) if len(rows) >= k else -2.0
            if float(rows[-1][2]) < kth - 2 * HALF_SCORE_MARGIN:
                break  # every row that can be in the exact top k was fetched
            fetch *= 4
        if not rows:
            return []
        ids = torch.tensor([int(r[0]) for r in rows], dtype=torch.int64)
        features = halfvec_rows([r[1] for r in rows], len(query))
        scores = features.float() @ query
        chosen = best_rows(scores, ids, min(k, len(rows))).tolist()
        return [((int(rows[i][0]), rows[i][3], bytes(rows[i][4]).hex(), float(rows[i][5]), int(rows[i][6]),
                  rows[i][7]), float(scores[i])) for i in chosen]

    def nearest(self, rows: torch.Tensor, fetch: int = 4) -> tuple[list[int], list[float]]:
        """For each unit row [M, D]: (ID, score) of the most similar stored row (-1, -2.0 when the table is empty),
        in one query (HNSW when the index exists); candidates rescored in float32 like search()."""
        if not len(rows):
            return [], []
        conn = self._reader()
        cur = conn.cursor(binary=True)
        with conn.pipeline(), conn.transaction():  # one round trip
            conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(NEAREST_EF_SEARCH),))
            queries = ", ".join(f"({i + 1}, %b)" for i in range(len(rows)))
            cur.execute(f"SELECT q.i, n.id, n.feature FROM (VALUES {queries}) AS q(i, h) CROSS JOIN LATERAL (SELECT "
                        f"id, feature FROM {self.table} ORDER BY feature <#> q.h LIMIT {int(fetch)}) AS n",
                        [Halfvec(r) for r in rows])
        found = cur.fetchall()
        best_ids, best_scores = [-1] * len(rows), [-2.0] * len(rows)
        if found:
            features = halfvec_rows([r[2] for r in found], rows.shape[1]).float()
            which = torch.tensor([int(r[0]) - 1 for r in found])
            scores = (features * rows.float()[which]).sum(dim=1).tolist()
            for i, image_id, score in zip(which.tolist(), [int(r[1]) for r in found], scores):
                if score > best_scores[i] or (score == best_scores[i] and image_id < best_ids[i]):
                    best_ids[i], best_scores[i] = image_id, score
        return best_ids, best_scores

    def drop(self) -> None:
        """Delete the library's tables (tests and benchmarks)."""
        with self._transaction() as conn:
            for suffix in TABLE_SUFFIXES:
                conn.execute(f"DROP TABLE IF EXISTS {self.table}{suffix}")
        self._hnsw_checked = self._index_seen = False


def ef_search_for(k: int) -> int:
    """hnsw.ef_search for a top-k query: the candidate list HNSW keeps (recall grows with it)."""
    return int(min(1000, max(100, 10 * k)))


def document_json(body: Any) -> str:
    """A document as canonical JSON (for checksums)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"))
