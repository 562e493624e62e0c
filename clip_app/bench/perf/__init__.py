"""The perf benchmark: `python -m clip_app.bench perf` (cli.py)."""
