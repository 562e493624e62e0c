"""Tags over the whole library, search confidence and percentiles, "none of these": the App with the colour model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clip_app.classify import LabelError
from clip_app.label_sets import LabelSetError
from clip_app.library.tags import SetTags, TagFile, TagsError, UnknownTagError, tags_path
from clip_app.service import App
from tests.support.app_helpers import make_app, png_bytes, write_png

MIX = (235, 80, 10)  # half way between red and orange: a middling cosine with both labels


def add(app: App, tmp_path: Path, colour: str | tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> int:
    """Add one solid-colour image (a new size gives new bytes for the same colour); its ID."""
    name = f"{colour if isinstance(colour, str) else 'mix'}-{size[0]}x{size[1]}.png"
    report = app.add_images([write_png(tmp_path / "more" / name, colour, size)])
    assert report.added, report.summary()
    return int(report.added[0].id)


@pytest.fixture()
def app(tmp_path: Path, colour_encoder) -> App:
    app = make_app(tmp_path, colour_encoder, ("red", "green", "blue", "grey"))
    add(app, tmp_path, "red", (50, 40))
    add(app, tmp_path, "green", (50, 40))
    app.save_label_set("colours", "red, green, blue")
    return app


def ids_of(app: App, colour: str) -> list[int]:
    return sorted(e.id for e in app.library if Path(e.name).stem.split("-")[0] == colour)


def stored(app: App) -> dict[str, SetTags]:
    return TagFile(tags_path(app.library.library_file)).load()


def test_tags_equal_the_images_of_each_colour_and_are_stored_with_their_provenance(app: App) -> None:
    tags = app.tag_library("colours")
    for colour in ("red", "green", "blue"):
        assert [e.id for e in app.images_with_tag(colour)] == ids_of(app, colour)
        assert tags.ids_with(colour).tolist() == ids_of(app, colour)
    assert tags.counts() == {"red": 2, "green": 2, "blue": 1}
    saved = stored(app)["colours"]
    assert saved.model == app.encoder.identity and saved.labels == ("red", "green", "blue")
    assert saved.template == "single" and saved.thresholds.tolist() == [0.25, 0.25, 0.25]
    assert app.label_sets.get_set("colours").tagged


def test_the_stored_cosine_is_the_one_classify_shows(app: App, tmp_path: Path) -> None:
    mix = add(app, tmp_path, MIX)
    tags = app.tag_library("colours")
    shown = {s.label: s.cosine for s in app.classify(str(app.image_info(mix).path), "red, green, blue",
                                                      save=False).scores}
    row = tags.ids.tolist().index(mix)
    for c, label in enumerate(tags.labels):
        assert tags.cosines[row, c].item() == pytest.approx(shown[label], abs=2e-3)  # stored float16 row vs decoded


def test_a_stricter_threshold_removes_exactly_the_weaker_tags(app: App, tmp_path: Path) -> None:
    mix = add(app, tmp_path, MIX)
    before = app.tag_library("colours")
    red_cos = dict(zip(before.ids.tolist(), before.cosines[:, 0].tolist()))
    assert mix in before.ids_with("red").tolist() and 0.3 < red_cos[mix] < 0.9
    strict = (red_cos[mix] + 1) / 2
    weaker = {i for i, c in red_cos.items() if 0.25 <= c < strict}
    assert weaker == {mix}
    after = app.set_tag_thresholds("colours", per_label={"red": strict})
    assert set(before.ids_with("red").tolist()) - set(after.ids_with("red").tolist()) == weaker
    assert after.ids_with("green").tolist() == before.ids_with("green").tolist()
    assert app.label_sets.get_set("colours").thresholds == {"red": strict}
    assert stored(app)["colours"].thresholds[0].item() == pytest.approx(strict)
    assert mix not in [e.id for e in app.images_with_tag("red")]
    loose = app.set_tag_thresholds("colours", threshold=0.2, per_label={"red": None})  # back to the set's own
    assert mix in loose.ids_with("red").tolist()


def test_a_new_image_is_tagged_on_add_and_a_deleted_one_leaves_no_tag(app: App, tmp_path: Path) -> None:
    app.tag_library("colours")
    new = add(app, tmp_path, "blue", (60, 40))
    assert new in stored(app)["colours"].ids_with("blue").tolist()  # written on add, not only when read
    assert new in [e.id for e in app.images_with_tag("blue")]
    gone = ids_of(app, "red")[0]
    app.delete_image(gone)
    assert gone not in stored(app)["colours"].ids.tolist()
    assert gone not in [e.id for e in app.images_with_tag("red")]


def test_changing_the_labels_recomputes_and_a_removed_label_loses_its_tags(app: App) -> None:
    app.tag_library("colours")
    app.save_label_set("colours", "red, blue")
    assert stored(app)["colours"].labels == ("red", "blue")
    with pytest.raises(UnknownTagError, match="green"):
        app.images_with_tag("green")
    app.delete_label_set("colours")
    assert "colours" not in stored(app)


def test_bad_input_is_refused_and_nothing_is_stored(app: App) -> None:
    app.tag_library("colours")
    sets_file = app.label_sets.path
    before_sets, before_tags = sets_file.read_bytes(), app.tags.path.read_bytes()
    bad = [
        (lambda: app.tag_library("nope"), LabelSetError, "no label set"),
        (lambda: app.tag_library(app.label_sets.builtin_names()[0]), LabelSetError, "read-only"),
        (lambda: app.set_tag_thresholds("colours", threshold=1.5), LabelError, "between -1 and 1"),
        (lambda: app.set_tag_thresholds("colours", threshold="nan"), LabelError, "between -1 and 1"),
        (lambda: app.set_tag_thresholds("colours", threshold="abc"), LabelError, "number"),
        (lambda: app.set_tag_thresholds("colours", per_label={"red": 0.3, "pink": 0.3}), LabelSetError, "pink"),
        (lambda: app.set_tag_thresholds("colours", per_label={"red": 0.3, "green": -2}), LabelError, "green"),
        (lambda: app.save_label_set("colours", " , "), LabelError, "no labels"),
        (lambda: app.save_label_set("", "red"), LabelSetError, "name"),
        (lambda: app.save_label_set("x" * 81, "red"), LabelSetError, "at most"),
        (lambda: app.images_with_tag("pink"), UnknownTagError, "pink"),
        (lambda: app.images_with_tag("red", "nope"), LabelSetError, "no label set"),
        (lambda: app.tag_preview("colours", "red", 2), LabelError, "between"),
    ]
    app.save_label_set("untagged", "red, blue")
    before_sets = sets_file.read_bytes()
    bad.append((lambda: app.images_with_tag("red", "untagged"), TagsError, "not tagged with the label set"))
    for action, error, message in bad:
        with pytest.raises(error, match=message):
            action()
    assert sets_file.read_bytes() == before_sets and app.tags.path.read_bytes() == before_tags


def test_a_damaged_tags_file_is_reported_by_check_rebuilt_by_repair_and_never_a_crash(app: App) -> None:
    app.tag_library("colours")
    app.tags.path.write_bytes(b"not a tags file")
    report = app.check()
    assert [p.kind for p in report.problems] == ["tags"] and "cannot be read" in report.problems[0].detail
    actions = app.repair().actions
    assert any("damaged tags file" in a for a in actions)
    assert app.check().ok and stored(app)["colours"].counts() == {"red": 2, "green": 2, "blue": 1}
    app.tags.path.write_bytes(b"\x80\x02garbage")
    assert [e.id for e in app.images_with_tag("red")] == ids_of(app, "red")  # reading recomputes, never crashes


def test_tags_of_another_model_are_reported_and_recomputed(app: App) -> None:
    app.tag_library("colours")
    sets = stored(app)
    other = SetTags(**{**sets["colours"].__dict__, "model": "another-model", "cosines": torch.zeros_like(
        sets["colours"].cosines)})
    TagFile(app.tags.path).save({"colours": other})
    problems = app.check().problems
    assert len(problems) == 1 and "another model" in problems[0].detail
    assert app.repair().actions == ["recomputed the tags of label set 'colours'"]
    assert stored(app)["colours"].model == app.encoder.identity and app.check().ok


def test_preview_counts_and_shows_the_borderline_images(app: App, tmp_path: Path) -> None:
    mix = add(app, tmp_path, MIX)
    tags = app.tag_library("colours")
    cos = tags.cosines[tags.ids.tolist().index(mix), 0].item()
    preview = app.tag_preview("colours", "red", cos + 0.01)
    assert preview.count == 2 and preview.above[0][0].id in ids_of(app, "red")
    assert preview.below[0][0].id == mix and preview.below[0][1] == pytest.approx(cos)
    assert app.tag_preview("colours", "red", cos).above[0][0].id == mix


def test_gallery_filter_and_search_limited_to_a_tag(app: App) -> None:
    app.tag_library("colours")
    page = app.gallery_page(1, tag="green")
    assert [e.id for e in page.entries] == ids_of(app, "green") and page.total == 2
    assert ("colours", "green", 2) in app.tag_counts()
    result = app.search_text("a photo of something red", tag="green")
    assert sorted(h.entry.id for h in result.hits) == ids_of(app, "green") and result.tag == "green"
    assert app.gallery_page(1).total == len(app.library)


def test_search_percentiles_and_confidence(tmp_path: Path, colour_encoder) -> None:
    colours = ("red", "green", "blue", "yellow", "cyan", "magenta", "white", "black", "orange", "brown", "grey")
    app = make_app(tmp_path, colour_encoder, colours)  # no purple in the gallery
    present = app.search_text("a photo of a red thing", k=3)
    assert present.confident, present.reason
    assert present.hits[0].percentile == 100.0 and present.hits[1].percentile < 100.0
    assert present.hits[1].percentile == pytest.approx(100.0 * (len(colours) - 1) / len(colours), abs=1e-6)
    absent = app.search_text("a photo of a purple thing", k=3)
    assert not absent.confident and "neutral" in absent.reason
    assert len(absent.hits) == 3  # the best guesses are still returned
    by_image = app.search_image(png_bytes("red"), k=2)
    assert by_image.confident and "image query" in by_image.reason


def test_confidence_thresholds_are_settings(tmp_path: Path, colour_encoder) -> None:
    from clip_app.search import ConfidenceRule
    colours = ("red", "green", "blue", "yellow", "cyan", "magenta", "white", "black", "orange", "brown", "grey")
    app = make_app(tmp_path, colour_encoder, colours)
    app.confidence_rule = ConfidenceRule(min_z=50.0)
    result = app.search_text("a photo of a red thing")
    assert not result.confident and "not distinctive" in result.reason


def test_none_of_these_for_a_grey_image_against_colour_labels(app: App) -> None:
    grey = app.classify(png_bytes("grey"), "red, green, blue", save=False, allow_none=True)
    assert grey.none_of_these is True and len(grey.scores) == 3  # raw cosines still there
    assert grey.neutral_cosine > max(s.cosine for s in grey.scores)
    red = app.classify(png_bytes("red"), "red, green, blue", save=False, allow_none=True)
    assert red.none_of_these is False
    assert app.classify(png_bytes("red"), "red, green", save=False).none_of_these is None  # opt-in


def test_label_sets_keep_template_and_thresholds_and_read_version_one(tmp_path: Path, colour_encoder) -> None:
    (tmp_path / "label_sets.json").write_text(json.dumps({"version": 1, "sets": {"old": ["red", "blue"]}}))
    app = make_app(tmp_path, colour_encoder, ("red",))
    assert app.label_sets.get_set("old").template == "single"
    app.save_label_set("new", "red, blue", template="a {} picture.")
    app.set_tag_thresholds("new", per_label={"blue": 0.4})
    raw = json.loads((tmp_path / "label_sets.json").read_text())
    assert raw["version"] == 2 and raw["sets"]["old"] == ["red", "blue"]
    assert raw["sets"]["new"]["template"] == "a {} picture." and raw["sets"]["new"]["thresholds"] == {"blue": 0.4}
    app.save_label_set("new", "red, blue, green")  # replacing the labels keeps the template and kept thresholds
    kept = app.label_sets.get_set("new")
    assert kept.template == "a {} picture." and kept.thresholds == {"blue": 0.4} and kept.tagged
    with pytest.raises(LabelSetError, match="exactly one"):
        app.save_label_set("bad", "red", template="no placeholder")


def test_a_tags_file_beside_a_library_in_the_gallery_is_neither_reported_nor_served(tmp_path: Path,
                                                                                     colour_encoder) -> None:
    from clip_app.library import FeatureLibrary, private_paths

    gallery = tmp_path / "gallery"
    app = App(colour_encoder, FeatureLibrary(gallery, gallery / "features_library.pth", colour_encoder))
    app.add_images([write_png(tmp_path / "in" / "red.png", "red")])
    app.save_label_set("rgb", "red, blue")
    app.tag_library("rgb")
    assert (gallery / "features_library.pth.tags").is_file()
    assert app.check().ok
    private = private_paths(gallery, gallery / "features_library.pth")
    assert (gallery / "features_library.pth.tags").absolute() in private
