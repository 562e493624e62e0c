"""The App's few-shot actions over the colour model: examples per label (by ID or upload), classify with the
adapted head beside zero-shot, examples gone with their image, "more like these", and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clip_app.label_sets import LabelSetError
from clip_app.library import UnknownImageError
from clip_app.service import App, InputError
from tests.support.app_helpers import make_app, png_bytes, write_png
from tests.support.fakes import color_encoder

COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "magenta")


@pytest.fixture()
def app(tmp_path: Path) -> App:
    app = make_app(tmp_path, color_encoder(), COLOURS)  # IDs 1..8 in COLOURS order
    app.save_label_set("kinds", "type A, type B")  # names that mean nothing to the model
    return app


def ids_of(app: App) -> dict[str, int]:
    return {Path(e.name).stem: e.id for e in app.library}


def test_examples_by_id_and_upload_teach_a_set_whose_names_mean_nothing(app: App, tmp_path: Path) -> None:
    ids = ids_of(app)
    before = app.classify_adapted(png_bytes((230, 30, 30)), "kinds")
    assert before.adapted is None and before.zero_shot[0].probability == pytest.approx(0.5)
    assert app.add_examples("kinds", "TYPE a", f"{ids['red']}, #{ids['orange']}") == {
        "type A": [ids["red"], ids["orange"]]}  # any case finds the label; '#12' and commas accepted
    count = len(app.library)
    examples = app.add_examples("kinds", "type B", image=str(write_png(tmp_path / "up" / "navy.png", (10, 10, 160))))
    assert len(app.library) == count + 1  # the upload went into the library first
    new_id = examples["type B"][0]
    assert app.image_info(new_id).name == "navy.png"
    app.add_examples("kinds", "type B", [ids["blue"], ids["blue"]])  # an ID once, however often given
    assert app.label_examples("kinds") == {"type A": [ids["red"], ids["orange"]], "type B": [new_id, ids["blue"]]}
    for method in ("tip", "prototype", "linear"):
        reddish = app.classify_adapted(png_bytes((235, 40, 25)), "kinds", method=method)
        bluish = app.classify_adapted(png_bytes((30, 30, 200)), "kinds", method=method)
        assert reddish.adapted[0].label == "type A" and bluish.adapted[0].label == "type B", method
        assert reddish.n_examples == 4 and reddish.labels_with_examples == 2 and reddish.method == method
    by_id = app.classify_adapted(name="kinds", image_id=ids["orange"])
    assert by_id.adapted[0].label == "type A" and by_id.image_id == ids["orange"]
    stored = json.loads(app.label_sets.path.read_text())
    assert stored["sets"]["kinds"] == ["type A", "type B"]
    assert stored["examples"]["kinds"]["type A"] == [ids["red"], ids["orange"]]


def test_examples_of_a_deleted_image_disappear_and_removal_is_checked(app: App) -> None:
    ids = ids_of(app)
    app.add_examples("kinds", "type A", [ids["red"], ids["yellow"]])
    app.add_examples("kinds", "type B", [ids["blue"]])
    app.delete_image(ids["yellow"])
    assert app.label_examples("kinds") == {"type A": [ids["red"]], "type B": [ids["blue"]]}
    with pytest.raises(LabelSetError, match=f"{ids['green']} are not examples"):
        app.remove_examples("kinds", "type A", [ids["red"], ids["green"]])
    assert app.label_examples("kinds")["type A"] == [ids["red"]]  # nothing was removed
    assert app.remove_examples("kinds", "", [ids["blue"]]) == {"type A": [ids["red"]]}  # any label
    assert ids["blue"] in ids_of(app).values()  # the image itself stays
    app.save_label_set("kinds", "type a, type C")  # re-saved: examples of labels kept (any case) stay
    assert app.label_examples("kinds") == {"type a": [ids["red"]]}
    app.rename_label_set("kinds", "sorts")
    assert app.label_examples("sorts") == {"type a": [ids["red"]]}


def test_an_example_id_missing_from_the_library_is_ignored_and_reported(app: App) -> None:
    ids = ids_of(app)
    app.add_examples("kinds", "type A", [ids["red"]])
    app.add_examples("kinds", "type B", [ids["blue"]])
    app.library.remove([ids["blue"]])  # removed behind the App's back (e.g. the index CLI)
    result = app.classify_adapted(png_bytes("red"), "kinds")
    assert result.ignored == [ids["blue"]] and result.n_examples == 1 and result.adapted[0].label == "type A"


def test_bad_example_input_is_a_clear_error_and_changes_nothing(app: App, tmp_path: Path) -> None:
    ids = ids_of(app)
    count = len(app.library)
    with pytest.raises(LabelSetError, match="'type Z' is not a label of 'kinds'"):
        app.add_examples("kinds", "type Z", image=str(write_png(tmp_path / "x.png", "red")))
    with pytest.raises(UnknownImageError, match="no image with ID 999"):
        app.add_examples("kinds", "type A", [ids["red"], 999])
    with pytest.raises(InputError, match="not an image ID"):
        app.add_examples("kinds", "type A", "3, seven")
    with pytest.raises(InputError, match="read-only"):
        app.add_examples(app.label_set_names()[0], "tench", [ids["red"]])
    with pytest.raises(InputError, match="no examples"):
        app.add_examples("kinds", "type A", "")
    with pytest.raises(LabelSetError, match="no label set named"):
        app.add_examples("nope", "type A", [ids["red"]])
    with pytest.raises(InputError, match="unknown method"):
        app.classify_adapted(png_bytes("red"), "kinds", method="magic")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(Exception, match="bad.png"):
        app.add_examples("kinds", "type A", image=str(bad))
    assert len(app.library) == count and app.label_examples("kinds") == {}


def test_more_like_these_moves_the_ranking_toward_the_examples(app: App) -> None:
    ids = ids_of(app)
    plain = [h.entry.id for h in app.search_text("a red thing", k=8).hits]
    assert plain[0] == ids["red"]
    refined = [h.entry.id for h in app.search_refine("a red thing", [ids["magenta"], ids["purple"]], k=8).hits]
    assert refined.index(ids["magenta"]) < plain.index(ids["magenta"])
    assert refined.index(ids["purple"]) < plain.index(ids["purple"])
    alone = app.search_refine("", [ids["cyan"]], k=3).hits  # no text: more like this one
    assert alone[0].entry.id == ids["cyan"]
    def green_score(negatives: list[int]) -> float:
        hits = app.search_refine("", [ids["cyan"]], negatives, k=8).hits
        return next(h.score for h in hits if h.entry.id == ids["green"])

    assert green_score([ids["green"]]) < green_score([])  # a negative example pushes its look-alikes down
    with pytest.raises(InputError, match="no positive examples"):
        app.search_refine("red", [])
    with pytest.raises(UnknownImageError, match="999"):
        app.search_refine("red", [999])


def test_examples_apply_only_to_the_sets_own_labels(app: App) -> None:
    assert not app.examples_apply("kinds", "type A, type B")  # no examples yet
    app.add_examples("kinds", "type A", [ids_of(app)["red"]])
    assert app.examples_apply("kinds", "type a\nTYPE B") and app.examples_apply("kinds", ["type A", "type B"])
    assert not app.examples_apply("kinds", "type A") and not app.examples_apply("kinds", " , ")
    assert not app.examples_apply("", "type A, type B")


def test_examples_and_a_trained_head_live_side_by_side_in_the_file(app: App) -> None:
    """label_sets.json holds "heads" (clip_app.finetune) and "examples": writing one keeps the other."""
    ids = ids_of(app)
    app.add_examples("kinds", "type A", [ids["red"]])
    raw = json.loads(app.label_sets.path.read_text())
    raw["heads"] = {"kinds": {"marker": True}}  # a head as another writer left it (content not read here)
    app.label_sets.path.write_text(json.dumps(raw))
    app.add_examples("kinds", "type B", [ids["blue"]])
    app.rename_label_set("kinds", "sorts")
    stored = json.loads(app.label_sets.path.read_text())
    assert stored["heads"] == {"sorts": {"marker": True}}
    assert stored["examples"] == {"sorts": {"type A": [ids["red"]], "type B": [ids["blue"]]}}
    app.delete_label_set("sorts")
    stored = json.loads(app.label_sets.path.read_text())
    assert "heads" not in stored and "examples" not in stored
