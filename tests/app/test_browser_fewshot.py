"""Few-shot end to end in headless chromium (as tests/test_browser.py): pick a label set with examples, Classify
shows the adapted answer beside the zero-shot one, add the photo as an example; mark a search result and ask for
"more like these"."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.app.test_browser import _require_chromium, page, screenshot, shots  # noqa: F401 - fixtures
from tests.support.app_helpers import make_app, write_png
from tests.support.app_helpers import served as serve
from tests.support.fakes import color_encoder


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    _require_chromium()
    root = tmp_path_factory.mktemp("browser-fewshot")
    app = make_app(root, color_encoder(), ("red", "orange", "blue", "cyan"))  # IDs 1..4
    app.save_label_set("kinds", "type A, type B")  # names that mean nothing to the colour model
    app.add_examples("kinds", "type A", [1, 2])
    app.add_examples("kinds", "type B", [3])
    with serve(app, root / "gallery") as url:
        yield url, app, root


def test_classify_with_examples_then_teach_and_refine_a_search(page, served, shots, tmp_path_factory,  # noqa: F811
                                                               tmp_path: Path) -> None:
    _, app, _ = served
    photo = write_png(tmp_path / "navy.png", (20, 20, 140), size=(64, 48))
    page.locator("#classify-image input[type=file]").set_input_files(str(photo))
    page.locator("#classify-image img").first.wait_for()
    page.get_by_text("Label sets", exact=True).click()
    page.get_by_label("Saved label sets").click()
    page.get_by_role("option", name="kinds").click()
    expect(page.locator("#classify-labels textarea")).to_have_value(re.compile("type A"))
    page.locator("#classify-run").click()
    page.locator("#classify-adapted-note", has_text="With your examples").wait_for()
    assert "with examples type B" in page.locator("#classify-adapted-note").inner_text()
    assert "type B" in page.locator("#classify-adapted").inner_text()
    screenshot(page, shots, tmp_path_factory, "classify-examples")

    page.get_by_text("Examples: teach the chosen label set with your photos").click()
    page.locator("#examples-add-photo").click()  # the label box holds the adapted answer: "this is right"
    page.locator("#examples-json", has_text="5").wait_for()  # the photo, saved by Classify as #5
    assert app.label_examples("kinds")["type B"] == [3, 5]

    page.get_by_role("tab", name="Search").click()
    page.locator("#search-query textarea, #search-query input").first.fill("something blue")
    page.locator("#search-run").click()
    page.locator("#search-message", has_text="images shown").wait_for()
    page.locator("#search-results .thumbnail-item, #search-results button").first.wait_for()
    page.locator("#search-results .thumbnail-item").first.click()
    expect(page.locator("#search-positives textarea, #search-positives input").first).to_have_value(
        re.compile(r"\d"))
    page.locator("#search-refine").click()
    page.locator("#search-message", has_text="images shown").wait_for()
    screenshot(page, shots, tmp_path_factory, "search-refine")
