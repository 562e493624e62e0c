"""Few-shot benchmark: `python -m clip_app.bench fewshot` (cli.py), its data, protocol, outputs and timings."""
