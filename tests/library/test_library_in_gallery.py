"""The documented set-up with the library file inside the gallery folder: its companions (lock, journal, label sets)
are not gallery files, and the web server never serves any of them."""

from __future__ import annotations

from pathlib import Path

import httpx

import app as launcher
from clip_app import ui
from clip_app.config import Settings
from clip_app.library import FeatureLibrary
from clip_app.service import App
from tests.support.app_helpers import free_port, write_png
from tests.support.fakes import color_encoder


def app_in_gallery(root: Path) -> App:
    encoder = color_encoder()
    gallery = root / "gallery"
    return App(encoder, FeatureLibrary(gallery, gallery / "features_library.pth", encoder))


def test_label_sets_beside_a_library_in_the_gallery_are_neither_reported_nor_moved(tmp_path: Path) -> None:
    app = app_in_gallery(tmp_path)
    app.add_images([write_png(tmp_path / "inbox" / f"{c}.png", c) for c in ("red", "green")])
    app.add_images([write_png(tmp_path / "inbox" / "blue.png", "blue")])  # a journal beside the library file
    app.save_label_set("pets", "cat, dog")
    gallery = tmp_path / "gallery"
    assert (gallery / "label_sets.json").is_file() and (gallery / "features_library.pth.journal").is_file()

    report = app.check()
    assert report.ok, report.problems
    assert not app.repair().actions
    assert (gallery / "label_sets.json").is_file() and app.label_set("pets") == ["cat", "dog"]
    assert not (gallery / ".quarantine").exists()


def test_the_server_never_serves_the_library_files_in_the_gallery(tmp_path: Path) -> None:
    gallery = tmp_path / "gallery"
    port = free_port()
    args = launcher.parse_args(["--port", str(port), "--gallery", str(gallery),
                                "--library", str(gallery / "features_library.pth")])
    settings = Settings.from_args(args)
    app = app_in_gallery(tmp_path)
    app.add_images([write_png(tmp_path / "inbox" / f"{c}.png", c) for c in ("red", "green")])
    app.add_images([write_png(tmp_path / "inbox" / "blue.png", "blue")])
    app.save_label_set("pets", "cat, dog")
    (gallery / ".quarantine").mkdir()
    (gallery / ".quarantine" / "notes.txt").write_text("private notes")
    private = [gallery / name for name in ("features_library.pth", "features_library.pth.journal",
                                           "features_library.pth.lock", "label_sets.json")]
    private.append(gallery / ".quarantine" / "notes.txt")
    assert all(path.is_file() for path in private)
    image = next(iter(app.library)).path
    demo = ui.build_demo(app)
    launcher.launch(demo, args, settings, prevent_thread_lock=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/", timeout=60) as http:
            assert http.get(f"gradio_api/file={image}").content == image.read_bytes()  # the route works
            for path in private:
                for url in (f"gradio_api/file={path}", f"gradio_api/file/{path}",
                            f"gradio_api/file={str(path).upper()}"):
                    answer = http.get(url)
                    assert answer.status_code in (403, 404), (url, answer.status_code)
                    assert answer.content != path.read_bytes()
    finally:
        demo.close()
