"""The Blocks: named endpoints, their wiring, and every handler called in process (no server)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import gradio as gr
import pytest

import clip_app.ui as ui
import clip_app.ui_fewshot as ui_fewshot
from clip_app.label_sets import IMAGENET_SET
from clip_app.service import App
from tests.support.app_helpers import make_app, write_png

NAMED = {"/classify", "/search", "/search_by_image", "/add_images", "/gallery_page", "/delete_image",
         "/add_example", "/remove_example", "/classify_adapted", "/search_refine"}


@pytest.fixture()
def app(tmp_path: Path, colour_encoder) -> App:
    return make_app(tmp_path, colour_encoder, ("red", "green", "blue"))


@pytest.fixture()
def demo(app: App) -> gr.Blocks:
    return ui.build_demo(app)


def endpoint(demo: gr.Blocks, api_name: str):
    return next(f for f in demo.fns.values() if f.api_name == api_name)


def handler(demo: gr.Blocks, name: str):
    """The function of an internal event, by the handler's name."""
    return next(f.fn for f in demo.fns.values() if f.fn is not None and f.fn.__name__ == name)


def test_the_named_api_is_exactly_the_ten_endpoints(demo: gr.Blocks) -> None:
    info = demo.get_api_info()
    assert set(info["named_endpoints"]) == NAMED
    assert not info.get("unnamed_endpoints")
    params = {name: [p["parameter_name"] for p in e["parameters"]] for name, e in info["named_endpoints"].items()}
    assert params["/classify"][:3] == ["image", "labels", "template"]
    assert params["/search"][:2] == ["query", "k"] and params["/search_by_image"][:2] == ["image", "k"]
    assert params["/add_images"] == ["files"] and params["/gallery_page"] == ["page"]
    assert params["/delete_image"] == ["id"]
    assert params["/add_example"] == ["label_set", "label", "image_ids", "image"]
    assert params["/remove_example"] == ["label_set", "label", "image_ids"]
    assert params["/classify_adapted"] == ["image", "label_set", "template", "method"]
    assert params["/search_refine"] == ["query", "positive_ids", "negative_ids", "k", "min_score"]
    # everything after the documented parameters has a default, so a client may leave it out
    for name, count in (("/classify", 3), ("/search", 2), ("/search_by_image", 2)):
        assert all(p["parameter_has_default"] for p in info["named_endpoints"][name]["parameters"][count:])


def test_first_outputs_and_concurrency(demo: gr.Blocks) -> None:
    assert isinstance(endpoint(demo, "classify").outputs[0], gr.Label)
    for name in ("search", "search_by_image", "gallery_page"):
        assert isinstance(endpoint(demo, name).outputs[0], gr.Gallery), name
    for name in ("classify", "search", "search_by_image", "gallery_page"):
        assert endpoint(demo, name).concurrency_limit > 1, name
    writes = [endpoint(demo, "add_images"), endpoint(demo, "delete_image")]
    assert all(f.concurrency_limit == 1 for f in writes)
    assert writes[0].concurrency_id == writes[1].concurrency_id


def test_classify_endpoint(demo: gr.Blocks, app: App, tmp_path: Path) -> None:
    photo = write_png(tmp_path / "up" / "photo.png", "yellow")
    fn = endpoint(demo, "classify").fn
    label, rows, tag_md, saved_md = fn(str(photo), "red, yellow, blue", "single")
    assert max(label, key=label.get) == "yellow" and set(label) == {"red", "yellow", "blue"}
    assert [r[0] for r in rows][0] == "yellow" and all(len(r) == 3 for r in rows)
    assert tag_md == "" and re.search(r"Saved to the gallery as \*\*#4\*\*", saved_md)
    _, _, tag_md, saved_md = fn(str(photo), "red, yellow, blue", "ensemble", True, 0.5, True)
    assert tag_md.startswith("**Tags** (cosine ≥ 0.50)") and "yellow" in tag_md
    assert "Already in the gallery as **#4**" in saved_md and len(app.library) == 4
    _, _, _, saved_md = fn(str(photo), "red", "a {} thing", False, 0.25, False)
    assert saved_md == "Not saved to the gallery."


@pytest.mark.parametrize("args, message", [
    ((None, "red", "single"), "no image"),
    (("NOTIMAGE", "red", "single"), "not an image"),
    (("PHOTO", " ,, ", "single"), "no labels"),
    (("PHOTO", "red", "nothing to fill"), "{}"),
])
def test_classify_errors_become_gr_errors(demo: gr.Blocks, app: App, tmp_path: Path, args, message: str) -> None:
    photo = write_png(tmp_path / "photo.png", "orange")
    bogus = tmp_path / "bogus.png"
    bogus.write_text("hello")
    args = tuple(str(photo) if a == "PHOTO" else str(bogus) if a == "NOTIMAGE" else a for a in args)
    with pytest.raises(gr.Error, match=re.escape(message)):
        endpoint(demo, "classify").fn(*args)
    assert len(app.library) == 3


def test_search_endpoints(demo: gr.Blocks, app: App, tmp_path: Path) -> None:
    items, message, ids = endpoint(demo, "search").fn("something red", 2)
    assert len(items) == 2 and message == "2 of 3 images shown."
    path, caption = items[0]
    assert re.fullmatch(r"#\d+ · -?\d\.\d{3}", caption)
    red_id = int(caption[1:].split(" ")[0])
    assert ids[0] == red_id  # the thumbnail is shown; the full file opens on click
    assert Path(path) == app.thumbnails.path_of(app.image_info(red_id).sha256) and Path(path).is_file()
    items, message, _ = endpoint(demo, "search").fn("a photo of nothing in particular", 3, 0.5)
    assert items == [] and "No image reaches the minimum score of 0.50" in message and "3 weaker" in message
    _, message, _ = endpoint(demo, "search").fn("ein rotes Auto", 3)
    assert "trained on English" in message
    items, _, ids = endpoint(demo, "search_by_image").fn(str(write_png(tmp_path / "ex.png", "green")), 1)
    assert len(items) == 1 and app.image_info(ids[0]).path.read_bytes() == \
        (tmp_path / "inbox" / "green.png").read_bytes()
    full, details = handler(demo, "pick")(ids, gr.SelectData(None, {"index": 0, "value": None}))
    served = Path(full.value["path"] if isinstance(full.value, dict) else full.value)
    assert served.read_bytes() == app.image_info(ids[0]).path.read_bytes() and full.visible is True  # full size
    for fn, args, message in ((endpoint(demo, "search").fn, ("  ", 5), "empty query"),
                              (endpoint(demo, "search").fn, ("red", 0), "between 1 and 50"),
                              (endpoint(demo, "search_by_image").fn, (None, 5), "no image")):
        with pytest.raises(gr.Error, match=message):
            fn(*args)


def test_gallery_page_select_and_delete_with_confirmation(demo: gr.Blocks, app: App) -> None:
    items, info, page, ids = endpoint(demo, "gallery_page").fn(1)
    assert info == "Page 1 of 1 · 3 images" and page == 1 and ids == [e.id for e in app.library]
    assert [caption for _, caption in items] == [f"#{i}" for i in ids]
    pick = next(f.fn for f in demo.fns.values() if f.fn is not None and f.fn.__name__ == "pick"
                and len(f.outputs) == 4)
    selected, details, row, full = pick(ids, gr.SelectData(None, {"index": 1, "value": None}))
    assert selected == ids[1] and details.startswith(f"**#{ids[1]}** · file 00000") and "added 20" in details
    assert row.visible is False and full.visible is True
    row, question = handler(demo, "ask")(selected)
    assert row.visible is True and f"#{ids[1]}" in question
    message, cleared, details, row = endpoint(demo, "delete_image").fn(selected)
    assert message.startswith(f"Deleted image #{ids[1]}") and cleared is None and row.visible is False
    assert [e.id for e in app.library] == [ids[0], ids[2]]
    for bad, text in ((None, "no image ID"), (999, "999"), ("x", "whole number")):
        with pytest.raises(gr.Error, match=text):
            endpoint(demo, "delete_image").fn(bad)
        with pytest.raises(gr.Error):
            handler(demo, "ask")(bad)
    assert len(app.library) == 2


def test_empty_gallery_says_so(tmp_path: Path, colour_encoder) -> None:
    demo = ui.build_demo(make_app(tmp_path, colour_encoder))
    items, info, page, ids = endpoint(demo, "gallery_page").fn(3)
    assert items == [] and "empty" in info and page == 1 and ids == []


def test_add_images_endpoint_summarises(demo: gr.Blocks, app: App, tmp_path: Path) -> None:
    bad = tmp_path / "new" / "broken.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xd8\xff garbage")
    files = [str(write_png(tmp_path / "new" / "white.png", "white")), str(tmp_path / "inbox" / "red.png"), str(bad)]
    summary, stats = endpoint(demo, "add_images").fn(files)
    assert summary.splitlines()[0] == "**Added 1**, duplicates 1, near-duplicates 0, failed 1."
    assert "red.png: already in the library as #1" in summary and "broken.jpg: failed:" in summary
    assert stats.startswith("**4** images · model color-test")
    with pytest.raises(gr.Error, match="no files"):
        endpoint(demo, "add_images").fn(None)


def test_library_maintenance_buttons(demo: gr.Blocks, app: App) -> None:
    report, stats = handler(demo, "run_check")()
    assert "no problems" in report and stats.startswith("**3** images")
    app.gallery_page(1).entries[0].path.unlink()
    report, _ = handler(demo, "run_check")()
    assert report.startswith("**Check**") and "no problems" not in report
    report, stats = handler(demo, "run_repair")()
    assert report.startswith("**Repair**\n\n- ") and stats.startswith("**2** images")
    report, _ = handler(demo, "run_rebuild")()
    assert report.startswith("**Rebuild**")
    assert "no problems" in handler(demo, "run_check")()[0]


def test_check_and_repair_buttons_show_progress(demo: gr.Blocks, app: App, tmp_path: Path) -> None:
    write_png(Path(app.stats().gallery_dir) / "dropped-in.png", "cyan")  # a file without a row: repair reads 4
    for name, files in (("run_check", 3), ("run_repair", 4)):
        seen: list = []
        report, _ = handler(demo, name)(progress=lambda value, desc=None, unit=None, s=seen: s.append((value, desc)))
        assert seen and seen[-1][0] == (files, files) and seen[-1][1], (name, seen)
        assert report.startswith(("**Check**", "**Repair**"))
    assert app.check().ok and len(app.library) == 4


def test_label_set_events(demo: gr.Blocks, app: App) -> None:
    dropdown, message = handler(demo, "save_labels")("colours", "red, green")
    assert dropdown.value == "colours" and "colours" in dropdown.choices[-1] and "Saved 2 labels" in message
    assert handler(demo, "pick_set")("colours") == ("red\ngreen", "colours")
    dropdown, _ = handler(demo, "rename")("colours", "rg")
    assert dropdown.value == "rg" and app.label_set("rg") == ["red", "green"]
    labels, name = handler(demo, "pick_set")(IMAGENET_SET)
    assert len(labels.splitlines()) == 1000 and name == IMAGENET_SET
    with pytest.raises(gr.Error, match="read-only"):
        handler(demo, "delete")(IMAGENET_SET)
    dropdown, _ = handler(demo, "delete")("rg")
    assert dropdown.value is None and app.label_set_names() == [IMAGENET_SET]


def test_a_damaged_label_sets_file_offers_the_built_in_set_and_says_why(tmp_path: Path, colour_encoder) -> None:
    app = make_app(tmp_path, colour_encoder)
    app.label_sets.path.write_text("{not json", encoding="utf-8")
    demo = ui.build_demo(app)  # no exception: the page still comes up
    sets = next(b for b in demo.blocks.values() if isinstance(b, gr.Dropdown) and b.label == "Saved label sets")
    assert [choice[0] for choice in sets.choices] == [IMAGENET_SET]
    notes = [b.value for b in demo.blocks.values() if isinstance(b, gr.Markdown) and "cannot be read" in str(b.value)]
    assert len(notes) == 1 and "label\\_sets.json" in notes[0]
    assert app.label_sets.path.read_text(encoding="utf-8") == "{not json"  # left untouched


@pytest.mark.parametrize("module", [ui, ui_fewshot])
def test_the_ui_module_stays_thin(module) -> None:
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.level == 0}
    relative = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level}
    assert not imported & {"torch", "clip", "PIL", "numpy"}
    assert relative <= {"service", "ui_fewshot", "ui"}
    calls = {node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
             for node in ast.walk(tree) if isinstance(node, ast.Call)}
    assert not calls & {"open", "read_bytes", "read_text", "write_bytes", "load", "save", "encode_texts",
                        "encode_images", "top_k", "softmax"}


def test_md_escape_keeps_names_literal() -> None:
    assert ui.md_escape("a_b*c[1](x).jpg") == "a\\_b\\*c\\[1\\](x).jpg"
