"""Benchmarks: `python -m clip_app.bench {imagenet,flickr8k,perf} ...`."""
