"""The tests' PostgreSQL: clip_app.bench.pg_local (also used by the scale benchmark)."""

from clip_app.bench.scale.pg_local import ENV_URL, PASSWORD, LocalServer, free_port, start_server

__all__ = ["ENV_URL", "PASSWORD", "LocalServer", "free_port", "start_server"]
