"""clip-app launcher: `python app.py [--model M] [--device D] [--gallery DIR] [--library FILE] ...`."""

from __future__ import annotations

import argparse
import logging
import sys

from clip_app.config import Settings, add_settings_arguments
from clip_app.model import ClipEncoder, ModelLoadError

log = logging.getLogger("clip_app")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="clip-app: zero-shot classification and image search with CLIP")
    add_settings_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    settings = Settings.from_args(args)
    try:
        encoder = ClipEncoder(settings.model, settings.device, download_root=settings.model_dir)
    except (ModelLoadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    import gradio as gr

    with gr.Blocks(title="clip-app") as demo:
        gr.Markdown(f"# clip-app\nModel {encoder.name} on {encoder.device}. The full interface is being built.")
    demo.launch(server_name=args.host, server_port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
