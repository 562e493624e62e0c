"""The scale benchmark: `python -m clip_app.bench scale` (cli.py); pg_local.py starts a throwaway PostgreSQL."""
