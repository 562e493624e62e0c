"""The running server against hostile requests (issue 12): numbers reach the App unrounded (6.6 never deletes #7),
request bodies over --max-request-size get 413 before they are read whole, every served copy of a deleted image
stops being served, and gallery pages send thumbnails."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Iterator

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from tests.support.app_helpers import make_app, png_bytes, served
from tests.support.fakes import COLOUR_NAMES

REQUEST_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    from tests.support.fakes import color_encoder

    root = tmp_path_factory.mktemp("serving")
    app = make_app(root, color_encoder(), COLOUR_NAMES[:7])
    with served(app, root / "gallery", library_file=root / "features_library.pth",
                max_request_size=REQUEST_LIMIT) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(server, tmp_path_factory: pytest.TempPathFactory) -> Client:
    return Client(server[0], verbose=False, analytics_enabled=False,
                  download_files=str(tmp_path_factory.mktemp("downloads")))


def call(url: str, api_name: str, data: list) -> tuple[str, object]:
    """(event, data) of one call through the REST API, the JSON body written by hand (NaN allowed)."""
    with httpx.Client(base_url=f"{url}gradio_api/", timeout=60) as http:
        answer = http.post(f"call/{api_name}", content=json.dumps({"data": data}),
                           headers={"Content-Type": "application/json"})
        assert answer.status_code == 200, answer.text
        text = http.get(f"call/{api_name}/{answer.json()['event_id']}").text
    event = text.split("event: ", 1)[1].split("\n", 1)[0]
    payload = text.split("data: ", 1)[1].split("\n", 1)[0]
    return event, json.loads(payload) if payload.strip() not in ("", "null") else None


def test_a_non_whole_id_through_the_api_deletes_nothing(server, client: Client) -> None:
    url, app = server
    before = [e.id for e in app.library]
    assert 7 in before
    for bad in (6.6, 7.4):
        with pytest.raises(AppError, match="the image ID must be a whole number"):
            client.predict(bad, api_name="/delete_image")
    event, data = call(url, "delete_image", [math.nan])
    assert event == "error" and "whole number" in json.dumps(data) and "cannot convert" not in json.dumps(data)
    assert [e.id for e in app.library] == before


@pytest.mark.parametrize("api_name, data, message", [
    ("search", ["a red thing", 2.5, 0.0], "the number of results must be a whole number"),
    ("search", ["a red thing", math.nan, 0.0], "the number of results must be a whole number"),
    ("search", ["a red thing", 3, math.nan], "the minimum score must be a number between -1 and 1"),
    ("gallery_page", [math.nan], "the page number must be a whole number"),
    ("gallery_page", [2.5], "the page number must be a whole number"),
    ("gallery_page", [math.inf], "the page number must be a whole number"),
    ("search", ["\x00\u200b\u200b", 3, 0.0], "empty query"),
])
def test_numbers_reach_the_app_unrounded_and_get_its_message(server, api_name: str, data: list,
                                                             message: str) -> None:
    event, answer = call(server[0], api_name, data)
    assert event == "error" and message in json.dumps(answer), answer


def test_a_request_body_over_the_limit_is_refused_before_it_is_read(server, client: Client) -> None:
    url, app = server
    labels = ", ".join(f"label {i}" for i in range(20000))  # about 230 KB of JSON
    with httpx.Client(base_url=f"{url}gradio_api/", timeout=60) as http:
        answer = http.post("call/search", json={"data": [labels, 3, 0.0]})
        assert answer.status_code == 413 and "over the limit of 64.0 KB" in answer.json()["error"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
            yield b'{"data": ["'
            for _ in range(100):
                yield b"x" * 1000
            yield b'", 3, 0.0]}'

        streamed = http.post("call/search", content=chunks(), headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413
        small = http.post("upload", files={"files": ("big.png", png_bytes("red", (400, 300)), "image/png")})
        assert small.status_code == 200  # uploads are not JSON bodies: --max-file-size governs them
    assert client.predict("a red thing", 1, api_name="/search")[0][0]["caption"].startswith("#1 · ")


def test_every_served_copy_of_a_deleted_image_is_gone(server) -> None:
    url, app = server
    data = png_bytes((10, 120, 200), (60, 50))
    with httpx.Client(base_url=url, timeout=60) as http:
        uploaded = http.post("gradio_api/upload", files={"files": ("mine.png", data, "image/png")}).json()[0]
        file_data = {"path": uploaded, "meta": {"_type": "gradio.FileData"}}
        event, answer = call(url, "classify", [file_data, "red, blue", "single", False, 0.25, True])
        assert event == "complete", answer
        image_id = int(answer[3].split("**#")[1].split("**")[0])
        event, page = call(url, "gallery_page", [1])
        urls = [item["image"]["url"] for item in page[0] if item["caption"] == f"#{image_id}"]
        assert len(urls) == 1
        served = [f"gradio_api/file={uploaded}", urls[0]]
        assert all(http.get(u).status_code == 200 for u in served)  # the test can fail
        assert http.get(urls[0]).content[8:12] == b"WEBP"  # the page sends the thumbnail
        event, _ = call(url, "delete_image", [image_id])
        assert event == "complete"
        for u in served:
            assert http.get(u).status_code in (403, 404), u
    assert not any(app.thumbnails.folder.glob(f"{hashlib.sha256(data).hexdigest()}*"))
