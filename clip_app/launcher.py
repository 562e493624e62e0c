"""The app launcher (`clip-app`, `python app.py`): flags and environment -> Settings -> App -> build_demo -> launch.

app.py at the top of a checkout is a thin file over this module (it adds the lazily built `demo` Gradio's reload
mode looks for); the installed `clip-app` command runs main().
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import TYPE_CHECKING, Any

from .config import Settings, add_request_limit_arguments, add_settings_arguments

if TYPE_CHECKING:  # pragma: no cover
    import gradio as gr

    from clip_app.service import App

log = logging.getLogger("clip_app")

AUTH_ENV = "CLIP_APP_AUTH"


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """'USER:PASSWORD' -> (user, password); None or '' -> None; anything else is a ValueError."""
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth needs USER:PASSWORD (both non-empty)")
    return user, password


def build_parser() -> argparse.ArgumentParser:
    """The launcher's flags: the shared settings flags plus the server's."""
    parser = argparse.ArgumentParser(description="clip-app: zero-shot classification and image search with CLIP")
    add_settings_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--auth", default=None,
                        help=f"require a login, USER:PASSWORD [env {AUTH_ENV}; default: no login]")
    parser.add_argument("--share", action="store_true", help="also open a public *.gradio.live link (off by default)")
    add_request_limit_arguments(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the flags (bad --auth / --max-file-size stop with a usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.auth = parse_auth(args.auth if args.auth is not None else os.environ.get(AUTH_ENV, ""))
        settings = Settings.from_args(args)  # flags over CLIP_APP_* variables; bad sizes and counts stop here
        for name in ("max_file_size", "max_request_size", "max_labels", "max_prompts"):
            setattr(args, name, getattr(settings, name))
    except ValueError as exc:
        parser.error(str(exc))
    return args


def create_app(args: argparse.Namespace) -> "App":
    """Load the model and the library once (ModelLoadError / LibraryError when they cannot be used)."""
    from clip_app.service import App

    return App.from_settings(Settings.from_args(args), max_file_size=args.max_file_size)


def create_demo(args: argparse.Namespace | None = None) -> "gr.Blocks":
    """The interface over a freshly loaded App (flags default to the environment's settings)."""
    from clip_app.ui import build_demo

    return build_demo(create_app(args if args is not None else parse_args([])))


def launch(demo: "gr.Blocks", args: argparse.Namespace, settings: Settings, prevent_thread_lock: bool = False) -> Any:
    """Serve the demo as the flags say."""
    from clip_app.ui import launch as launch_ui

    return launch_ui(demo, gallery_dir=settings.gallery_dir, library_file=settings.library_file, host=args.host,
                     port=args.port, auth=args.auth, share=args.share, max_file_size=args.max_file_size,
                     max_request_size=settings.max_request_size, prevent_thread_lock=prevent_thread_lock)


def main(argv: list[str] | None = None) -> int:
    """Entry point: load once, then serve until interrupted; 1 with a clear message when loading fails."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # noise from the clip package
    warnings.filterwarnings("ignore", message="`torch.jit.load` is deprecated")  # clip.load tries TorchScript first
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests
    args = parse_args(argv)
    settings = Settings.from_args(args)
    from clip_app.encoders import ModelLoadError
    from clip_app.files import describe_os_error
    from clip_app.library import LibraryError
    from clip_app.ui import build_demo

    try:
        demo = build_demo(create_app(args))
    except (ModelLoadError, LibraryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a folder that cannot be read or written ...
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    launch(demo, args, settings)
    return 0


def in_gradio_reloader() -> bool:
    """True in the thread of Gradio's reload watcher (`gradio app.py`), which re-runs this file's code."""
    try:
        from gradio.cli.commands.reload import reload_thread
    except ImportError:  # pragma: no cover - an older or trimmed gradio
        return False
    return bool(getattr(reload_thread, "running_reload", False))
