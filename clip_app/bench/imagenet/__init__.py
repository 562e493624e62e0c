"""The imagenet benchmark: `python -m clip_app.bench imagenet` (cli.py)."""
