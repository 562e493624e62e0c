"""Companion data of a PostgreSQL library, beside its rows: JSON documents (the label sets) in `<table>_docs` and
binary ones (the tags: the bytes of a `.tags` file, tensors of cosines and classifiers) in `<table>_blobs`.

    <table>_docs    name text PRIMARY KEY, body jsonb, updated double precision (unix time)
    <table>_blobs   name text PRIMARY KEY, body bytea, updated double precision, stamp text (new on every write)

Both tables are created on the first write (a library made before `_blobs` existed gets it then); reading a table
that does not exist yet finds nothing. Each write is one transaction; readers never wait for it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from .pg_sql import DOCS_COLUMNS, PgTables

__all__ = ["PgCompanions"]


class PgCompanions:
    """The companion documents and blobs of one library's tables (thread-safe, as PgTables)."""

    def __init__(self, tables: PgTables) -> None:
        self.tables = tables
        self.docs, self.blobs = f"{tables.table}_docs", f"{tables.table}_blobs"

    @property
    def location(self) -> str:
        """The library's URL, password masked."""
        return self.tables.location.shown

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        import psycopg

        try:
            return self.tables._reader().execute(sql, params).fetchall()
        except psycopg.errors.UndefinedTable:  # nothing written yet
            return []

    # ---- JSON documents ----------------------------------------------------------------------------------------
    def get_document(self, name: str) -> Any | None:
        """A companion JSON document (label sets), or None."""
        rows = self._read(f"SELECT body FROM {self.docs} WHERE name = %s", (name,))
        return rows[0][0] if rows else None

    def put_document(self, name: str, body: Any) -> None:
        """Write a companion JSON document (one transaction)."""
        from psycopg.types.json import Jsonb

        conn = self.tables._reader()  # this thread's own connection: never inside another thread's transaction
        with conn.transaction():
            conn.execute(f"CREATE TABLE IF NOT EXISTS {self.docs} {DOCS_COLUMNS}")
            conn.execute(f"INSERT INTO {self.docs} (name, body, updated) VALUES (%s, %s, %s) ON CONFLICT (name) DO "
                         "UPDATE SET body = EXCLUDED.body, updated = EXCLUDED.updated",
                         (name, Jsonb(body), time.time()))

    def documents(self) -> dict[str, Any]:
        """Every companion JSON document by name."""
        return {r[0]: r[1] for r in self._read(f"SELECT name, body FROM {self.docs}")}

    # ---- binary companions ------------------------------------------------------------------------------------
    def blob_stamp(self, name: str) -> str | None:
        """What changes with every write of a blob (one small query; None when there is none)."""
        rows = self._read(f"SELECT stamp FROM {self.blobs} WHERE name = %s", (name,))
        return rows[0][0] if rows else None

    def get_blob(self, name: str) -> tuple[bytes, str] | None:
        """(bytes, stamp) of a binary companion (the tags), or None."""
        rows = self._read(f"SELECT body, stamp FROM {self.blobs} WHERE name = %s", (name,))
        return (bytes(rows[0][0]), rows[0][1]) if rows else None

    def put_blob(self, name: str, body: bytes) -> str:
        """Write a binary companion (one transaction); returns its new stamp."""
        stamp = uuid.uuid4().hex
        conn = self.tables._reader()
        with conn.transaction():
            conn.execute(f"CREATE TABLE IF NOT EXISTS {self.blobs} (name text PRIMARY KEY, body bytea NOT NULL, "
                         "updated double precision NOT NULL, stamp text NOT NULL)")
            conn.execute(f"INSERT INTO {self.blobs} (name, body, updated, stamp) VALUES (%s, %s, %s, %s) ON CONFLICT "
                         "(name) DO UPDATE SET body = EXCLUDED.body, updated = EXCLUDED.updated, "
                         "stamp = EXCLUDED.stamp", (name, bytes(body), time.time(), stamp))
        return stamp

    def blobs_all(self) -> dict[str, bytes]:
        """Every binary companion by name."""
        return {r[0]: bytes(r[1]) for r in self._read(f"SELECT name, body FROM {self.blobs}")}
