"""End to end in a real headless browser: Debian's chromium driven by playwright, one server, one page load.

Classifies an uploaded photo, searches, adds images, browses the gallery and deletes one with confirmation, tags
the library with a label set and filters the gallery by a tag, and
saves a screenshot of each tab (to tmp_path, and into $CLIP_APP_SCREENSHOTS when that is set). Without
/usr/bin/chromium the test skips, except under CI (the CI variable set), where it fails.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.app_helpers import make_app, write_png
from tests.support.app_helpers import served as serve
from tests.support.fakes import color_encoder

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000  # the build machines are slow and shared


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the browser test, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    """Where screenshots go; copied to $CLIP_APP_SCREENSHOTS (if set) at the end."""
    folder = tmp_path_factory.mktemp("screenshots")
    taken: list[Path] = []
    yield taken
    target = os.environ.get("CLIP_APP_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for path in taken:
            shutil.copy2(path, Path(target) / path.name)
    assert all(p.parent == folder or p.exists() for p in taken)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    _require_chromium()
    root = tmp_path_factory.mktemp("browser")
    app = make_app(root, color_encoder(), ("red", "green", "blue"))
    with serve(app, root / "gallery") as url:
        yield url, app, root


@pytest.fixture(scope="module")
def page(served):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            tab.set_default_timeout(TIMEOUT_MS)
            tab.goto(served[0], wait_until="load")
            tab.locator("#classify-run").wait_for()
            yield tab
        finally:
            browser.close()


def screenshot(page, shots: list[Path], tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    folder = shots[0].parent if shots else tmp_path_factory.getbasetemp() / "screenshots0"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"app-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    shots.append(path)
    assert path.stat().st_size > 1000
    return path


def test_classify_an_uploaded_photo(page, served, shots, tmp_path_factory, tmp_path: Path) -> None:
    _, app, _ = served
    photo = write_png(tmp_path / "my-photo.png", "yellow", size=(64, 48))
    page.locator("#classify-image input[type=file]").set_input_files(str(photo))
    page.locator("#classify-image img").first.wait_for()
    page.locator("#classify-labels textarea").fill("red, yellow, blue")
    page.get_by_label("Tag mode (every label over the threshold)").check()
    page.locator("#classify-run").click()
    page.locator("#classify-saved", has_text="Saved to the gallery as #4").wait_for()
    assert page.locator("#classify-tags").inner_text().startswith("Tags (cosine ≥ 0.25): yellow")
    assert "yellow" in page.locator("#classify-top").inner_text()
    assert len(app.library) == 4
    screenshot(page, shots, tmp_path_factory, "classify")


def test_search_by_text(page, served, shots, tmp_path_factory) -> None:
    page.get_by_role("tab", name="Search").click()
    page.locator("#search-query textarea, #search-query input").first.fill("something red")
    page.locator("#search-run").click()
    page.locator("#search-message", has_text="images shown").wait_for()
    captions = page.locator("#search-results").inner_text()
    assert "#1 · 1.000" in captions
    screenshot(page, shots, tmp_path_factory, "search")


def test_add_images_in_the_library_tab(page, served, shots, tmp_path_factory, tmp_path: Path) -> None:
    _, app, _ = served
    page.get_by_role("tab", name="Library").click()
    files = [write_png(tmp_path / "white.png", "white"), write_png(tmp_path / "black.png", "black"),
             write_png(tmp_path / "red-copy.png", "red")]
    page.locator("#library-files input[type=file]").set_input_files([str(f) for f in files])
    page.locator("#library-files", has_text="black").wait_for()
    page.locator("#library-add").click()
    page.locator("#library-summary", has_text="Added 2").wait_for()
    assert "duplicates 1" in page.locator("#library-summary").inner_text()
    page.locator("#library-stats", has_text="6 images").wait_for()
    assert len(app.library) == 6
    screenshot(page, shots, tmp_path_factory, "library")


def test_browse_and_delete_with_confirmation(page, served, shots, tmp_path_factory) -> None:
    _, app, _ = served
    page.get_by_role("tab", name="Gallery").click()
    page.locator("#gallery-info", has_text="Page 1 of 1 · 6 images").wait_for()
    thumbnails = page.locator("#gallery-images button.thumbnail-item, #gallery-images .thumbnail-item")
    thumbnails.first.wait_for()
    assert thumbnails.count() == 6
    thumbnails.nth(1).click()
    page.locator("#gallery-details", has_text="#2").wait_for()
    page.locator("#gallery-delete").click()
    page.locator("#gallery-confirm").wait_for()  # the confirmation row appears
    screenshot(page, shots, tmp_path_factory, "gallery")
    page.locator("#gallery-confirm").click()
    page.locator("#gallery-message", has_text="Deleted image #2").wait_for()
    page.locator("#gallery-info", has_text="5 images").wait_for()
    assert 2 not in [e.id for e in app.library] and len(app.library) == 5
    assert len(shots) == 4


def test_tag_the_library_then_filter_the_gallery_by_tag(page, served, shots, tmp_path_factory) -> None:
    _, app, _ = served
    app.save_label_set("rgb", "red, green, blue")
    page.get_by_role("tab", name="Library").click()  # refreshes the label set choices
    page.get_by_text("Tags: tag the whole library with a label set").click()
    page.locator("#tags-set input").click()
    page.get_by_role("option", name="rgb").click()
    page.locator("#tags-run").click()
    page.locator("#tags-summary", has_text="Tagged 5 images").wait_for()
    page.locator("#tags-count", has_text="would be tagged").wait_for()
    assert "red: 1 image" in page.locator("#tags-summary").inner_text()
    screenshot(page, shots, tmp_path_factory, "tags")
    page.get_by_role("tab", name="Gallery").click()  # refreshes the tag choices
    page.locator("#gallery-tag input").click()
    page.get_by_role("option", name="red · 1").click()
    page.locator("#gallery-info", has_text="1 image tagged").wait_for()
    assert page.locator("#gallery-images .thumbnail-item").count() == 1


def test_a_missing_chromium_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    monkeypatch.setattr(f"{__name__}.CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the browser test"):
        _require_chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y chromium"):
        _require_chromium()
