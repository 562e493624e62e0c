"""The few-shot parts of the interface, handlers called in process: examples, adapted answer beside zero-shot,
"more like these" marks and search, "use as example" in the Gallery tab."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest

import clip_app.ui as ui
from clip_app.service import App
from clip_app.ui_fewshot import toggle_id
from tests.app.test_ui import endpoint, handler
from tests.support.app_helpers import make_app, write_png
from tests.support.fakes import color_encoder


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> App:
    """One App and one interface for the module (built once: building is the slow part); each test its own set."""
    app = make_app(tmp_path_factory.mktemp("fewshot-ui"), color_encoder(), ("red", "orange", "blue", "cyan"))
    for name in ("kinds", "errors", "gallery"):  # IDs 1..4 in the colours' order
        app.save_label_set(name, "type A, type B")
    return app


@pytest.fixture(scope="module")
def demo(app: App) -> gr.Blocks:
    return ui.build_demo(app)


def test_examples_teach_the_set_and_classify_shows_both_answers(demo: gr.Blocks, app: App, tmp_path: Path) -> None:
    dropdown, examples = handler(demo, "set_examples")("kinds")
    assert [c[0] for c in dropdown.choices] == ["type A", "type B"] and examples == {}
    assert endpoint(demo, "add_example").fn("kinds", "type A", "1, 2") == ({"type A": [1, 2]}, "")
    photo = write_png(tmp_path / "p" / "navy.png", (10, 10, 150))
    examples, _ = endpoint(demo, "add_example").fn("kinds", "type B", "4", str(photo))
    assert examples["type B"][0] == 4 and len(examples["type B"]) == 2  # the upload is a new library image
    zero, adapted, note, best = endpoint(demo, "classify_adapted").fn(str(write_png(tmp_path / "r.png", "red")),
                                                                      "kinds", "single", "tip")
    assert max(adapted, key=adapted.get) == "type A" == best and set(zero) == {"type A", "type B"}
    assert "With your examples" in note and "4 examples of 2 of 2 labels" in note
    after = handler(demo, "adapt_after_classify")
    value, note, best = after(str(write_png(tmp_path / "b.png", "blue")), "kinds", "type A\ntype B", "single", "tip")
    assert max(value, key=value.get) == "type B" == best
    value, note, _ = after(str(photo), "kinds", "cat, dog", "single", "tip")
    assert value is None and "labels differ" in note
    assert endpoint(demo, "remove_example").fn("kinds", "type A", "2") == ({"type A": [1], "type B": examples[
        "type B"]}, "")
    photo_added = handler(demo, "add_photo_example")("kinds", "type A", str(write_png(tmp_path / "o.png", "orange")))
    assert photo_added["type A"] == [1, 2]  # the same bytes as image #2: recognised, not stored twice


def test_example_errors_become_gr_errors_and_change_nothing(demo: gr.Blocks, app: App) -> None:
    for args, message in ((("errors", "type Z", "1"), "not a label"), (("errors", "type A", "99"), "99"),
                          (("", "type A", "1"), "pick a label set"), (("errors", "type A", "x"), "not an image ID")):
        with pytest.raises(gr.Error, match=message):
            endpoint(demo, "add_example").fn(*args)
    with pytest.raises(gr.Error, match="upload the photo first"):
        handler(demo, "add_photo_example")("errors", "type A", None)
    with pytest.raises(gr.Error, match="are not examples"):
        endpoint(demo, "remove_example").fn("errors", "type A", "1")
    assert app.label_examples("errors") == {}


def test_more_like_these_marks_results_and_refines(demo: gr.Blocks, app: App) -> None:
    mark = handler(demo, "mark_result")
    assert mark("more like this", "", "", [3, 1], gr.SelectData(None, {"index": 0, "value": None})) \
        == ("3", gr.skip())
    assert mark("less like this", "3", "1", [3, 1], gr.SelectData(None, {"index": 1, "value": None}))[1] == ""
    assert mark("more like this", "", "", [3], gr.SelectData(None, {"index": 5, "value": None})) == (gr.skip(),
                                                                                                 gr.skip())
    assert toggle_id("3, 5", 7) == "3, 5, 7" and toggle_id("3, 5", 3) == "5"
    items, text, shown = endpoint(demo, "search_refine").fn("a red thing", "2", "", 4, 0.0)
    assert shown[:2] in ([1, 2], [2, 1])
    assert items[0][1].startswith("#1 ") or items[0][1].startswith("#2 ")
    assert [c for _, c in items].index(next(c for _, c in items if c.startswith("#2 "))) <= 1
    with pytest.raises(gr.Error, match="no positive examples"):
        endpoint(demo, "search_refine").fn("red", "", "")[0]


def test_gallery_image_used_as_an_example(demo: gr.Blocks, app: App) -> None:
    note = handler(demo, "use_as_example")(3, "gallery", "type b")
    assert "#3 is an example of “type B”" in note and app.label_examples("gallery") == {"type B": [3]}
    with pytest.raises(gr.Error, match="select an image first"):
        handler(demo, "use_as_example")(None, "gallery", "type B")
