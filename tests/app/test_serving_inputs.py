"""Hostile input to the App (issue 12): numbers that are not whole, not finite or out of range are refused with a
clear message (6.6 never deletes #7), queries of invisible characters are empty, and one request's work is capped
(labels, prompts). Nothing is changed by a refused request."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from clip_app.service import App, InputError, clean_query
from tests.support.app_helpers import make_app, write_png
from tests.support.fakes import COLOUR_NAMES

SEVEN = COLOUR_NAMES[:7]


@pytest.fixture()
def app(tmp_path: Path, colour_encoder) -> App:
    return make_app(tmp_path, colour_encoder, SEVEN)


@pytest.mark.parametrize("bad", [6.6, "6.6", 6.5, 7.000001, math.nan, math.inf, -math.inf, "nan", "inf", True, "1e400"])
def test_a_delete_with_an_id_that_is_not_whole_deletes_nothing(app: App, bad: object) -> None:
    before = [e.id for e in app.library]
    assert 7 in before
    with pytest.raises(InputError, match="the image ID must be a whole number"):
        app.delete_image(bad)
    assert [e.id for e in app.library] == before


def test_whole_ids_in_any_spelling_still_work(app: App) -> None:
    assert app.delete_image(7.0).id == 7 and app.delete_image("#6").id == 6 and app.delete_image("5").id == 5


@pytest.mark.parametrize("k", [2.5, math.nan, math.inf, "2.5", "x"])
def test_k_must_be_whole(app: App, k: object) -> None:
    with pytest.raises(InputError, match="the number of results must be a whole number"):
        app.search_text("a red thing", k)
    with pytest.raises(InputError, match="the number of results must be a whole number"):
        app.search_image(str(write_png(app.library.gallery_dir.parent / "q.png", "red")), k)


@pytest.mark.parametrize("page", [2.5, math.nan, math.inf, -math.inf, "abc"])
def test_page_must_be_whole(app: App, page: object) -> None:
    with pytest.raises(InputError, match="the page number must be a whole number"):
        app.gallery_page(page)


@pytest.mark.parametrize("score", [math.nan, math.inf, 1.5, -2, "high"])
def test_min_score_and_threshold_must_be_cosines(app: App, tmp_path: Path, score: object) -> None:
    count = len(app.library)
    with pytest.raises(InputError, match="the minimum score must be a number between -1 and 1"):
        app.search_text("a red thing", 3, score)
    photo = write_png(tmp_path / "new.png", "orange")
    with pytest.raises(InputError, match="the tag threshold must be a number between -1 and 1"):
        app.classify(str(photo), "red, orange", tag_threshold=score, save=True)
    assert len(app.library) == count  # refused before anything was stored
    assert app.search_text("a red thing", 3, 0.5).min_score == 0.5  # in range: fine


@pytest.mark.parametrize("query", ["\x00", "\x00\x00\x00", "\u200b\u200c\u200d", "\ufeff", " \x00 \u200b\t\x07 ",
                                   "\u2060\u00ad"])
def test_a_query_of_invisible_characters_is_empty(app: App, query: str) -> None:
    assert clean_query(query) == ""
    with pytest.raises(InputError, match="empty query"):
        app.search_text(query, 3)


def test_invisible_characters_are_dropped_from_a_real_query(app: App) -> None:
    assert clean_query("a\x00 red\u200b thing") == "a red thing"
    assert app.search_text("a\x00 red\u200b thing", 1).hits[0].entry.id == 1


def test_labels_and_prompts_per_request_are_capped(tmp_path: Path, colour_encoder) -> None:
    app = make_app(tmp_path, colour_encoder, ("red",))
    app.max_labels, app.max_prompts = 5, 100
    photo = write_png(tmp_path / "p.png", "green")
    calls = colour_encoder.cache_misses
    with pytest.raises(InputError, match=r"too many labels: 6, at most 5 in one request \(--max-labels"):
        app.classify(str(photo), "a, b, c, d, e, f", save=True)
    with pytest.raises(InputError, match=r"2 labels x 80 templates = 160 prompts, at most 100 \(--max-prompts"):
        app.classify(str(photo), "red, green", "ensemble", save=True)
    assert colour_encoder.cache_misses == calls and len(app.library) == 1  # nothing encoded, nothing stored
    with pytest.raises(InputError, match=r"too many labels: 6, at most 5 in one set"):
        app.save_label_set("big", "a, b, c, d, e, f")
    assert "big" not in app.label_set_names()
    assert app.classify(str(photo), "red, green, blue, cyan, white", save=False).scores[0].label == "green"
