"""Where the app's cold start goes: each phase of `python app.py` timed in one fresh process, in the order the
launcher runs them (imports of torch, the clip package, gradio and clip-app; loading the model; opening the library;
building the interface; starting the server).

`python -m clip_app.bench.perf.startup --model CHECKPOINT [--gallery DIR --library FILE]` prints one JSON object of
seconds per phase and their total. Run it twice and take the second (the first also pays for a cold disk cache)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def phases(model: str, gallery: Path, library: Path) -> dict[str, float]:
    """Seconds of each start-up phase, measured in this (fresh) process."""
    marks: dict[str, float] = {}
    start = last = time.perf_counter()

    def mark(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        marks[name] = round(now - last, 3)
        last = now

    import torch  # noqa: F401

    mark("import torch")
    import clip  # noqa: F401

    mark("import clip (torchvision, ftfy, regex)")
    import gradio  # noqa: F401

    mark("import gradio")
    from ...config import Settings
    from ...launcher import launch  # noqa: F401
    from ...service import App
    from ...ui import build_demo
    from ...ui import launch as launch_ui

    mark("import clip_app (service, ui)")
    from ...encoders import ClipEncoder

    encoder = ClipEncoder(model, "cpu")
    mark("load the model")
    from ...library import FeatureLibrary

    settings = Settings(model=model, gallery_dir=gallery, library_file=library)
    app = App(encoder, FeatureLibrary(settings.gallery_dir, settings.library_file, encoder))
    mark("open the library")
    demo = build_demo(app)
    mark("build the interface")
    from .app import free_port

    launch_ui(demo, gallery_dir=gallery, library_file=library, port=free_port(), prevent_thread_lock=True,
              quiet=True)
    mark("start the server")
    demo.close()
    marks["total"] = round(time.perf_counter() - start, 3)
    return marks


def main(argv: list[str] | None = None) -> int:
    """Print the phases as JSON."""
    parser = argparse.ArgumentParser(prog="python -m clip_app.bench.perf.startup", description=__doc__)
    parser.add_argument("--model", required=True, help="a checkpoint file (or a model name whose weights are here)")
    parser.add_argument("--gallery", default=None)
    parser.add_argument("--library", default=None)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="clip-startup-"))
    gallery = Path(args.gallery) if args.gallery else work / "gallery"
    library = Path(args.library) if args.library else work / "features_library.pth"
    print(json.dumps(phases(args.model, gallery, library)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
