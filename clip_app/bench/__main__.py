"""`python -m clip_app.bench <benchmark> ...`: each benchmark module adds its own sub-command."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: sub-command -> module in clip_app.bench providing add_arguments(parser) and run(args) -> int
BENCHMARKS = {
    "imagenet": "clip_app.bench.imagenet.cli",
    "flickr8k": "clip_app.bench.flickr8k.cli",
    "perf": "clip_app.bench.perf.cli",
    "fewshot": "clip_app.bench.fewshot.cli",
    "scale": "clip_app.bench.scale.cli",
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(prog="python -m clip_app.bench", description=__doc__)
    sub = parser.add_subparsers(dest="benchmark", required=True)
    modules: dict[str, object] = {}
    for name, module_name in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        modules[name] = module
        module.add_arguments(sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0]))
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    return int(modules[args.benchmark].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
