"""clip-app launcher: `python app.py [--model M] [--gallery DIR] [--library FILE] [--device D] [--host H] [--port P]
[--auth USER:PASSWORD] [--share] [--max-file-size 20MB]`.

`demo` is built on first access from the CLIP_APP_* environment variables, so importing this module loads no model;
`create_demo(args)` builds one from parsed flags.

`gradio app.py [-- FLAGS]` (reload mode while developing) runs this file as `python app.py FLAGS`, so main() serves
with every launch setting (allowed and blocked paths, auth, size limit); Gradio's watcher then runs this file's code
again in its own thread at start and after every change: there `demo` is rebuilt from the same FLAGS and swapped
in, and main() is not run a second time.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from clip_app.launcher import (  # noqa: F401  (the launcher's names, as app.py always had them)
    AUTH_ENV,
    build_parser,
    create_app,
    create_demo,
    in_gradio_reloader,
    launch,
    main,
    parse_args,
    parse_auth,
)

if TYPE_CHECKING:  # pragma: no cover
    import gradio as gr

_demo: "gr.Blocks | None" = None


def __getattr__(name: str) -> Any:
    """Module attribute `demo`, built from the environment on first access (not at import)."""
    global _demo
    if name == "demo":
        if _demo is None:
            _demo = create_demo()
        return _demo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    if in_gradio_reloader():  # the watcher re-ran this file: a fresh demo with the flags the server started with
        _demo = create_demo(parse_args(sys.argv[1:]))
    else:
        sys.exit(main())
