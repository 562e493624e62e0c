"""A gallery page of camera photos through the running server, full files (before thumbnails) against thumbnails:
the bytes the browser receives and the time until the page and all its pictures have arrived.

The same library (48 photos of 4000 x 3000 by default) is served twice by the real UI, first with
App(thumbnails=False) (the old behaviour: every gallery file, full size), then with thumbnails: the first view
(thumbnails made on the way) and a warm view. Each view is one /gallery_page call through the REST API plus a GET of
every picture it names, as a browser does (sequentially here)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from .setup import write_photos
from .stats import Results

log = logging.getLogger(__name__)

PAGE_PHOTOS = 48
PHOTO_SIZE = (4000, 3000)


def view_page(url: str) -> tuple[int, float]:
    """(bytes of every picture on page 1, seconds for the call and the downloads)."""
    import httpx

    start = time.perf_counter()
    with httpx.Client(base_url=url, timeout=300) as http:
        event = http.post("gradio_api/call/gallery_page", json={"data": [1]}).json()["event_id"]
        text = http.get(f"gradio_api/call/gallery_page/{event}").text
        data = json.loads(text.split("data: ", 1)[1].split("\n", 1)[0])
        total = 0
        for item in data[0]:
            answer = http.get(item["image"]["url"])
            answer.raise_for_status()
            total += len(answer.content)
    return total, time.perf_counter() - start


def serve_and_view(app: object, gallery: Path, views: int) -> list[tuple[int, float]]:
    """Launch the UI over this App, view page 1 `views` times, close."""
    from ... import ui
    from .app import free_port

    demo = ui.build_demo(app)  # type: ignore[arg-type]
    port = free_port()
    ui.launch(demo, gallery_dir=gallery, port=port, prevent_thread_lock=True, quiet=True)
    try:
        return [view_page(f"http://127.0.0.1:{port}/") for _ in range(views)]
    finally:
        demo.close()


def measure_gallery_page(encoder: object, repeats: int, results: Results, workdir: Path,
                         count: int = PAGE_PHOTOS, size: tuple[int, int] = PHOTO_SIZE) -> None:
    """app.page.* figures: bytes and seconds of one gallery page, full files against thumbnails."""
    from ...library import FeatureLibrary
    from ...service import App

    root = workdir / "thumbs-page"
    shutil.rmtree(root, ignore_errors=True)
    photos = write_photos(root / "photos", count, size, seed=7)
    library = FeatureLibrary(root / "gallery", root / "features_library.pth", encoder)  # type: ignore[arg-type]
    report = library.add(photos)
    if len(report.added) != count:
        raise RuntimeError(f"could not build the page: {report.summary()}")
    before = serve_and_view(App(encoder, library, thumbnails=False), root / "gallery", repeats)  # type: ignore
    shutil.rmtree(root / "gallery.thumbs", ignore_errors=True)
    after = serve_and_view(App(encoder, library), root / "gallery", repeats + 1)  # type: ignore[arg-type]
    cold, warm = after[0], after[1:]
    label = f"gallery page of {count} photos of {size[0]} x {size[1]}"
    results.add("app.page.bytes.full", f"{label}: data sent, full files (before)", "MB", [b / 2**20 for b, _ in before])
    results.add("app.page.bytes.thumbs", f"{label}: data sent, thumbnails", "MB", [b / 2**20 for b, _ in warm])
    results.add("app.page.bytes.ratio", f"{label}: thumbnail bytes / full-file bytes", "x",
                [t / f for (t, _), (f, _) in zip(warm, before)])
    results.add("app.page.seconds.full", f"{label}: call + downloads, full files (before)", "s", [s for _, s in before])
    results.add("app.page.seconds.thumbs_first", f"{label}: call + downloads, first view (makes thumbnails)", "s",
                [cold[1]])
    results.add("app.page.seconds.thumbs", f"{label}: call + downloads, thumbnails made", "s", [s for _, s in warm])
    results.add("app.page.seconds.ratio", f"{label}: thumbnail page time / full-file page time", "x",
                [t / f for (_, t), (_, f) in zip(warm, before)])
