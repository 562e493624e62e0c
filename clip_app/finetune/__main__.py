"""`python -m clip_app.finetune retrieval|classify ...`: fine-tune CLIP and measure what it buys.

retrieval: contrastive fine-tuning on Flickr8k-style image-caption pairs (R@1/5/10 before, per epoch and after);
classify:  the image tower plus a linear head initialised from the zero-shot classifier, on DIR/train/<class>/*
           (top-1 on DIR/val before, per epoch, after and after WiSE-FT interpolation).
Both write DIR/model.pt (load it anywhere with --model DIR/model.pt), DIR/finetune.json, a report and a plot.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import FinetuneError


def build_parser() -> argparse.ArgumentParser:
    from . import classify, retrieval

    parser = argparse.ArgumentParser(prog="python -m clip_app.finetune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="task", required=True)
    retrieval.add_arguments(sub.add_parser("retrieval", help="contrastive fine-tuning on image-caption pairs"))
    classify.add_arguments(sub.add_parser("classify", help="image tower + zero-shot-initialised linear head"))
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from . import classify, retrieval
    from .common import EXIT_CODES

    args = build_parser().parse_args(argv)
    module = retrieval if args.task == "retrieval" else classify
    try:
        outcome = module.run(args)
    except FinetuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted outside the training loop; continue with --resume if --out holds a checkpoint.pt, "
              "else start again with --overwrite", file=sys.stderr)
        return 130
    result = outcome.result
    if result.status in ("interrupted", "max_steps"):
        print(f"{result.message}. Continue with the same command and --resume.", file=sys.stderr)
    elif result.status == "nan":
        print(f"error: {result.message}", file=sys.stderr)
    if outcome.summary is not None:
        print(module.headline(outcome.summary))
        print(f"results written to {outcome.out}/")
    return EXIT_CODES[result.status]


if __name__ == "__main__":
    sys.exit(main())
