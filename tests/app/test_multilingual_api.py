"""A Chinese query and Chinese labels through gradio_client, against the app served with a multilingual tower."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch
from gradio_client import Client, handle_file

from clip_app import ui
from clip_app.encoders import ClipEncoder, RoutedTextEncoder, load_text_model
from tests.support.app_helpers import make_app, served, write_png
from tests.support.fakes import TINY_DIM
from tests.support.multilingual_helpers import save_tiny_sentence_transformer

QUERY = "红色的车"  # with seed 2, three of the four images score over the minimum score of 0 (random weights)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: ClipEncoder) -> Iterator[tuple[str, object]]:
    root = tmp_path_factory.mktemp("api-ml")
    tower = load_text_model(str(save_tiny_sentence_transformer(root / "tiny-multilingual", TINY_DIM, seed=2)))
    app = make_app(root, tiny_encoder, ("red", "green", "blue", "white"))
    app.text_encoder = RoutedTextEncoder(tiny_encoder, tower, "auto", tiny_encoder.identity)
    with served(app, root / "gallery") as url:
        yield url, app


@pytest.fixture(scope="module")
def client(server, tmp_path_factory: pytest.TempPathFactory) -> Client:
    return Client(server[0], verbose=False, analytics_enabled=False,
                  download_files=str(tmp_path_factory.mktemp("downloads")))


def test_a_chinese_query_is_answered_by_the_multilingual_tower(client: Client, server) -> None:
    app = server[1]
    gallery, message = client.predict(QUERY, 4, api_name="/search")
    assert f"Text tower: {app.text_encoder.multilingual.name}" in message and "English" not in message
    ids, features = app.library.snapshot()
    scores = features.float() @ app.text_encoder.multilingual.encode_texts([QUERY])[0]
    expected = [f"#{int(ids[i])}" for i in torch.argsort(scores, descending=True) if scores[i] >= 0]  # min score 0
    assert len(expected) >= 2 and [g["caption"].split(" ")[0] for g in gallery] == expected
    _, message = client.predict("a red photo", 4, api_name="/search")
    assert f"Text tower: CLIP {app.encoder.name}" in message


def test_chinese_labels_classify_and_say_which_tower_read_them(client: Client, server, tmp_path: Path) -> None:
    app = server[1]
    photo = write_png(tmp_path / "photo.png", "green")
    label, table, tags, saved = client.predict(handle_file(str(photo)), "红色, 绿色, blue", "single", save=False,
                                               api_name="/classify")
    assert {row[0] for row in table["data"]} == {"红色", "绿色", "blue"}
    assert label["label"] == table["data"][0][0]
    assert f"{app.text_encoder.multilingual.name} for 红色, 绿色" in saved
    assert f"CLIP {app.encoder.name} for blue" in saved
    _, table, tags, _ = client.predict(handle_file(str(photo)), "红色, 绿色", "ensemble", tag_mode=True,
                                       threshold=0.0, save=False, api_name="/classify")
    assert tags.startswith("**Tags**")
    assert {label for label, _, cosine in table["data"] if cosine >= 0} == {
        label for label in ("红色", "绿色") if f"{label} (" in tags}


def test_the_query_box_names_the_accepted_languages(server) -> None:
    assert ui.query_label(server[1]).startswith("Describe the images you are looking for (English, ")
