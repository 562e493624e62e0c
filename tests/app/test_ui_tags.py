"""The interface's tags: the Library tab's Tags panel, the tag filters, "No confident match", "none of these"."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest

import clip_app.ui as ui
from clip_app.service import App
from tests.app.test_ui import endpoint, handler
from tests.support.app_helpers import make_app, png_bytes, write_png


@pytest.fixture()
def app(tmp_path: Path, colour_encoder) -> App:
    app = make_app(tmp_path, colour_encoder, ("red", "green", "blue"))
    app.add_images([write_png(tmp_path / "more" / "red2.png", "red", (50, 40))])
    app.save_label_set("rgb", "red, green, blue")
    return app


@pytest.fixture()
def demo(app: App) -> gr.Blocks:
    return ui.build_demo(app)


def test_tag_library_endpoint_and_threshold_editing(demo: gr.Blocks, app: App) -> None:
    summary, shown, label, threshold = endpoint(demo, "tag_library").fn("rgb")
    assert summary.startswith("**Tagged 4 images**") and "- red: 2 images" in summary
    assert shown["set"] == "rgb" and shown["labels"]["red"]["ids"] == [1, 4] and shown["labels"]["red"]["count"] == 2
    assert label.choices == [("red", "red"), ("green", "green"), ("blue", "blue")] and threshold == 0.25
    count, above, below = handler(demo, "preview")("rgb", "red", 0.25)
    assert "**2** images would be tagged" in count and {c.split(" ")[0] for _, c in above} == {"#1", "#4"}
    assert below and all(float(c.split(" · ")[1]) < 0.25 for _, c in below)
    summary, shown = handler(demo, "save_threshold")("rgb", "red", -1.0)
    assert shown["labels"]["red"]["count"] == 4 and app.label_sets.get_set("rgb").thresholds == {"red": -1.0}
    assert "- red: 4 images (cosine ≥ -1.000)" in summary
    with pytest.raises(gr.Error, match="between -1 and 1"):
        handler(demo, "save_threshold")("rgb", "red", 3)
    with pytest.raises(gr.Error, match="no label set"):
        endpoint(demo, "tag_library").fn("nope")
    with pytest.raises(gr.Error, match="pick a label set"):
        endpoint(demo, "tag_library").fn(None)


def test_images_with_tag_gallery_filter_and_search_limited_to_a_tag(demo: gr.Blocks, app: App) -> None:
    endpoint(demo, "tag_library").fn("rgb")
    assert endpoint(demo, "images_with_tag").fn("red") == [{"id": 1, "file": app.image_info(1).file},
                                                           {"id": 4, "file": app.image_info(4).file}]
    assert endpoint(demo, "images_with_tag").fn("green", "rgb") == [{"id": 2, "file": app.image_info(2).file}]
    with pytest.raises(gr.Error, match="no label 'pink'"):
        endpoint(demo, "images_with_tag").fn("pink")
    items, info, page, ids = endpoint(demo, "gallery_page").fn(1, "red")
    assert ids == [1, 4] and info == "Page 1 of 1 · 2 images tagged “red”"
    assert endpoint(demo, "gallery_page").fn(1)[3] == [1, 2, 3, 4]
    items, message, _ = endpoint(demo, "search").fn("something green", 5, 0.0, "red")
    assert {c.split(" ")[0] for _, c in items} == {"#1", "#4"} and "only images tagged “red”" in message
    choices = ui.tag_choice_list(app)
    assert choices[0][1] == "" and ("red · 2", "red") in choices


def test_no_confident_match_is_said_above_the_best_guesses(demo: gr.Blocks) -> None:
    items, message, _ = endpoint(demo, "search").fn("a photo of a purple thing", 2)
    assert len(items) == 2 and message.startswith("**No confident match**")
    assert message.index("No confident match") < message.index("2 of 4 images shown")
    items, message, _ = endpoint(demo, "search").fn("a photo of a red thing", 2)
    assert "No confident match" not in message and items[0][1].endswith("percentile 100.0")


def test_classify_none_of_these(demo: gr.Blocks, tmp_path: Path) -> None:
    grey = tmp_path / "grey.png"
    grey.write_bytes(png_bytes("grey"))
    _, rows, tag_md, _ = endpoint(demo, "classify").fn(str(grey), "red, green, blue", "single", False, 0.25, False,
                                                       True)
    assert tag_md.startswith("**None of these**") and len(rows) == 3
    _, _, tag_md, _ = endpoint(demo, "classify").fn(str(grey), "red, green, blue", "single", False, 0.25, False)
    assert tag_md == ""
