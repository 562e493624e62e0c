"""Bad and awkward input through the App and through the running server's API (gradio_client and raw REST): each
bad file or text gets a clear message, nothing is stored, awkward images are stored byte for byte and classified by
what they show, and the server keeps answering."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from clip_app.images import ImageError
from tests.support.app_helpers import make_app, served, write_png
from tests.support.fakes import COLOUR_NAMES, color_encoder
from tests.support.reliability_helpers import awkward_good_samples, bad_samples, folder_state

BAD = bad_samples()
ALL_COLOURS = ", ".join(COLOUR_NAMES)


def test_bad_files_through_the_app_store_nothing(tmp_path: Path, colour_encoder) -> None:
    app = make_app(tmp_path / "lib", colour_encoder, ("red", "green"))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    before = folder_state(tmp_path / "lib")
    for sample in BAD:
        path = inbox / sample.name
        path.write_bytes(sample.data)
        result = app.add_images([path]).results[0]
        assert result.status == "failed" and result.name == sample.name
        assert re.search(sample.expect, result.error), result.error
        with pytest.raises(ImageError, match=sample.expect):
            app.classify(str(path), "red, green", save=True)
        with pytest.raises(ImageError, match=sample.expect):
            app.search_image(str(path))
    assert folder_state(tmp_path / "lib") == before
    assert app.search_text("a red thing", 1).hits[0].entry.id == 1


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object, Path]]:
    root = tmp_path_factory.mktemp("input-api")
    app = make_app(root / "lib", color_encoder(), ("red", "green", "blue"))
    with served(app, root / "lib" / "gallery") as url:
        yield url, app, root


@pytest.fixture(scope="module")
def client(server, tmp_path_factory: pytest.TempPathFactory) -> Client:
    return Client(server[0], verbose=False, analytics_enabled=False,
                  download_files=str(tmp_path_factory.mktemp("downloads")))


def keeps_serving(client: Client) -> None:
    gallery, _ = client.predict("a red thing", 1, api_name="/search")
    assert gallery[0]["caption"].startswith("#1 · ")


def test_bad_files_through_the_api_get_clear_messages_and_store_nothing(client: Client, server,
                                                                       tmp_path: Path) -> None:
    _, app, root = server
    before = folder_state(root / "lib")
    for sample in BAD:
        path = tmp_path / sample.name
        path.write_bytes(sample.data)
        for args, api_name in (((handle_file(str(path)), "red, green"), "/classify"),
                               ((handle_file(str(path)),), "/search_by_image")):
            with pytest.raises(AppError) as info:
                client.predict(*args, api_name=api_name)
            message = str(info.value)
            assert re.fullmatch(sample.expect + ".*", message), (api_name, message)  # our words, not Gradio's
            assert "/tmp" not in message and "preprocess" not in message
        summary, _ = client.predict([handle_file(str(path))], api_name="/add_images")
        assert summary.startswith("**Added 0**") and f"- {sample.name}: failed: " in summary
        keeps_serving(client)
    assert folder_state(root / "lib") == before


def test_awkward_images_through_classify_are_judged_and_stored_as_uploaded(client: Client, server,
                                                                          tmp_path: Path) -> None:
    _, app, _ = server
    for sample in awkward_good_samples():
        path = tmp_path / sample.name
        path.write_bytes(sample.data)
        label, _, _, saved = client.predict(handle_file(str(path)), ALL_COLOURS, "single", api_name="/classify")
        assert label["label"] == sample.expect, (sample.name, label["label"])
        image_id = app.library.find_sha256(hashlib.sha256(sample.data).hexdigest())
        assert image_id is not None and f"#{image_id}" in saved, (sample.name, saved)  # the uploaded bytes, kept
        assert app.library.get(image_id).path.read_bytes() == sample.data
        summary, _ = client.predict([handle_file(str(path))], api_name="/add_images")
        assert f"already in the library as #{image_id}" in summary
        gallery, _ = client.predict(handle_file(str(path)), 5, api_name="/search_by_image")
        scores = {g["caption"].split(" · ")[0]: float(g["caption"].split(" · ")[1]) for g in gallery}
        assert scores.get(f"#{image_id}", 0) >= 0.999, (sample.name, scores)  # finds itself (ties: lower ID first)
    assert app.check().ok
    keeps_serving(client)


@pytest.mark.parametrize("args, api_name, expected", [
    ((" ".join(["red"] * 1000), 3), "/search", r"the query is too long \(3999 characters, at most 1000\)"),
    (("", 3), "/search", "empty query: describe what you are looking for"),
    ((" \n\t ", 3), "/search", "empty query"),
    (("PHOTO", " , ,\n", "single"), "/classify", "no labels: type at least one label"),
    (("PHOTO", "red, green", "a photo without a slot"), "/classify", r"needs exactly one '\{\}'"),
    (("PHOTO", "red, " + "x" * 1000, "single"), "/classify", r"label too long \(1000 characters, at most 300\)"),
])
def test_bad_text_gets_a_clear_message(client: Client, server, tmp_path: Path, args, api_name: str,
                                       expected: str) -> None:
    count = len(server[1].library)
    photo = handle_file(str(write_png(tmp_path / "photo.png", "green")))
    with pytest.raises(AppError, match=expected):
        client.predict(*[photo if a == "PHOTO" else a for a in args], api_name=api_name)
    assert len(server[1].library) == count
    keeps_serving(client)


def test_awkward_text_is_answered(client: Client, server, tmp_path: Path) -> None:
    photo = handle_file(str(write_png(tmp_path / "photo.png", "green")))
    gallery, message = client.predict("红色的汽车", 3, api_name="/search")  # Chinese: answered, with a note
    assert len(gallery) == 3 and "does not look like English" in message
    label, table, _, _ = client.predict(photo, "red, red, Green, green ", "single", save=False, api_name="/classify")
    assert [row[0] for row in table["data"]] == ["Green", "red"]  # duplicates (any case) counted once
    many = ", ".join(["green"] + [f"thing number {i}" for i in range(999)])
    label, table, _, _ = client.predict(photo, many, "single", save=False, api_name="/classify")
    assert len(table["data"]) == 1000 and label["label"] == "green"
    label, _, _, _ = client.predict(photo, "{red}, {green}, gr{}een", "single", save=False, api_name="/classify")
    assert label["label"] in ("{green}", "gr{}een")
    label, _, _, _ = client.predict(photo, "red, green", "a {} thing", save=False, api_name="/classify")
    assert label["label"] == "green"
    keeps_serving(client)


def test_an_upload_that_names_a_server_file_or_url_is_refused(server, tmp_path: Path) -> None:
    url, app, root = server
    secret = write_png(tmp_path / "private" / "secret.png", "yellow")
    before = folder_state(root / "lib")
    gallery_file = next(iter(app.library)).path
    for path in (str(secret), str(gallery_file), "/etc/passwd", f"{url}gradio_api/file={gallery_file}",
                 "http://169.254.169.254/latest/meta-data/", "file:///etc/passwd"):
        data = {"path": path, "meta": {"_type": "gradio.FileData"}}
        for api_name, payload in (("classify", [data, "red, yellow", "single", False, 0.5, True]),
                                  ("add_images", [[data]]), ("search_by_image", [data, 3, 0.0])):
            with httpx.Client(base_url=f"{url}gradio_api/", timeout=60) as http:
                event = http.post(f"call/{api_name}", json={"data": payload}).json()["event_id"]
                answer = http.get(f"call/{api_name}/{event}").text
            assert "event: error" in answer and "event: complete" not in answer, (path, api_name, answer)
            assert "not uploaded by a user" in answer or "failed validation" in answer, answer
    assert folder_state(root / "lib") == before
