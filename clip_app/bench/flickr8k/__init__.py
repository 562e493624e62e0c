"""The flickr8k benchmark: `python -m clip_app.bench flickr8k` (cli.py)."""
