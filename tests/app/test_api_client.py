"""The named API through gradio_client, against the app served in a thread on a free port, with a login."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tests.support.app_helpers import make_app, served, write_png
from tests.support.fakes import color_encoder

AUTH = ("ada", "lovelace-1815")
MAX_FILE_SIZE = 4096  # bytes: the test photos are a few hundred bytes


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object, Path]]:
    root = tmp_path_factory.mktemp("api")
    app = make_app(root, color_encoder(), ("red", "green", "blue"), max_file_size=MAX_FILE_SIZE)
    with served(app, root / "gallery", auth=AUTH, max_file_size=MAX_FILE_SIZE) as url:
        yield url, app, root


@pytest.fixture(scope="module")
def client(server, tmp_path_factory: pytest.TempPathFactory) -> Client:
    return Client(server[0], auth=AUTH, verbose=False, analytics_enabled=False,
                  download_files=str(tmp_path_factory.mktemp("downloads")))


def test_the_client_sees_exactly_the_named_endpoints(client: Client) -> None:
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/classify", "/search", "/search_by_image", "/add_images", "/gallery_page",
                              "/delete_image", "/tag_library", "/images_with_tag", "/add_example",
                              "/remove_example", "/classify_adapted", "/search_refine"}


def test_classify_returns_the_label_first(client: Client, server, tmp_path: Path) -> None:
    photo = write_png(tmp_path / "photo.png", "green")
    label, table, tags, saved = client.predict(handle_file(str(photo)), "red, green, blue", "single",
                                               api_name="/classify")
    assert label["label"] == "green"
    assert [c["label"] for c in label["confidences"]][0] == "green"
    assert table["headers"] == ["label", "probability", "cosine"] and table["data"][0][0] == "green"
    assert tags == "" and "Already in the gallery as **#2**" in saved
    _, _, tags, _ = client.predict(handle_file(str(photo)), "red, green", "ensemble", tag_mode=True, threshold=0.5,
                                   save=False, api_name="/classify")
    assert "green" in tags
    label, *_ = client.predict(handle_file(str(photo)), "red, green", "a {} square", save=False, api_name="/classify")
    assert label["label"] == "green"  # a custom template passes through the template dropdown


def test_search_endpoints_return_the_gallery_first(client: Client) -> None:
    gallery, message = client.predict("a red thing", 2, api_name="/search")
    assert len(gallery) == 2 and gallery[0]["caption"].startswith("#1 · ") and message == "2 of 3 images shown."
    assert Path(gallery[0]["image"]).is_file()  # served from the gallery through Gradio's cache
    gallery, _ = client.predict(handle_file(str(write_png(Path(gallery[0]["image"]).parent / "ex.png", "blue"))), 1,
                                api_name="/search_by_image")
    assert [g["caption"].split(" ")[0] for g in gallery] == ["#3"]


def test_add_browse_and_delete(client: Client, server, tmp_path: Path) -> None:
    _, app, _ = server
    files = [write_png(tmp_path / "white.png", "white"), write_png(tmp_path / "black.png", "black")]
    summary, stats = client.predict([handle_file(str(f)) for f in files], api_name="/add_images")
    assert summary.startswith("**Added 2**") and "images" in stats
    gallery, info, page, *_ = client.predict(1, api_name="/gallery_page")
    ids = [int(g["caption"][1:]) for g in gallery]
    assert info == f"Page 1 of 1 · {len(app.library)} images" and page == 1 and ids == [e.id for e in app.library]
    message, *_ = client.predict(ids[-1], api_name="/delete_image")
    assert message.startswith(f"Deleted image #{ids[-1]}") and ids[-1] not in [e.id for e in app.library]


def test_tag_the_library_then_filter_by_tag(client: Client, server) -> None:
    _, app, _ = server
    app.save_label_set("rgb", "red, green, blue")
    summary, tags, label, threshold = client.predict("rgb", api_name="/tag_library")
    assert summary.startswith("**Tagged") and tags["set"] == "rgb" and threshold == 0.25
    red = [e.id for e in app.library if e.name == "red.png"]
    assert tags["labels"]["red"] == {"threshold": 0.25, "count": len(red), "ids": red}
    assert client.predict("red", api_name="/images_with_tag") == [{"id": i, "file": app.image_info(i).file}
                                                                   for i in red]
    assert client.predict("red", "rgb", api_name="/images_with_tag") == client.predict("red",
                                                                                       api_name="/images_with_tag")
    gallery, message = client.predict("a photo of a purple thing", 2, api_name="/search")  # the old parameters
    assert len(gallery) == 2 and "percentile" in gallery[0]["caption"] and message.startswith("**No confident")
    with pytest.raises(AppError, match="no label 'pink'"):
        client.predict("pink", api_name="/images_with_tag")
    with pytest.raises(AppError, match="no label set"):
        client.predict("nope", api_name="/tag_library")


@pytest.mark.parametrize("args, api_name, text", [
    (("   ", 5), "/search", "empty query"),
    ((None, "red", "single"), "/classify", "no image"),
    ((987654,), "/delete_image", "987654"),
])
def test_errors_reach_the_client_as_messages(client: Client, server, args, api_name: str, text: str) -> None:
    count = len(server[1].library)
    with pytest.raises(AppError, match=text):
        client.predict(*args, api_name=api_name)
    assert len(server[1].library) == count


def test_empty_labels_and_oversized_files_are_refused(client: Client, server, tmp_path: Path) -> None:
    _, app, _ = server
    count = len(app.library)
    with pytest.raises(AppError, match="no labels"):
        client.predict(handle_file(str(write_png(tmp_path / "p.png", "cyan"))), " , ", "single", api_name="/classify")
    big = write_png(tmp_path / "big.png", "cyan")
    big.write_bytes(big.read_bytes() + b"\0" * (MAX_FILE_SIZE + 100))
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # the client checks the limit first
        client.predict([handle_file(str(big))], api_name="/add_images")
    with httpx.Client(base_url=server[0]) as http:  # and the server refuses such an upload by itself
        http.post("login", data={"username": AUTH[0], "password": AUTH[1]})
        answer = http.post("gradio_api/upload", files={"files": ("big.png", big.read_bytes(), "image/png")})
        assert answer.status_code == 413
    assert len(app.library) == count


def test_a_request_without_credentials_is_rejected(server) -> None:
    url = server[0]
    with pytest.raises(Exception):  # noqa: B017 - the client cannot even read the app's config
        Client(url, verbose=False, analytics_enabled=False)
    assert httpx.get(f"{url}config").status_code == 401
    assert httpx.post(f"{url}gradio_api/queue/join", json={"data": ["red", 3], "fn_index": 0}).status_code in (401, 403)


def test_only_gallery_files_are_served(server) -> None:
    url, app, root = server
    with httpx.Client(base_url=url) as http:
        assert http.post("login", data={"username": AUTH[0], "password": AUTH[1]}).status_code == 200
        gallery_file = next(iter(app.library)).path
        assert http.get(f"gradio_api/file={gallery_file}").status_code == 200
        for secret in (root / "features_library.pth", Path(__file__)):
            assert http.get(f"gradio_api/file={secret}").status_code == 403, secret


def test_the_readme_api_examples_run(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = server[0]
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## API (gradio_client)", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    assert 'Client("http://127.0.0.1:7860/")' in code
    code = code.replace('Client("http://127.0.0.1:7860/")', f"Client({url!r}, auth={AUTH!r}, verbose=False)")
    for name, colour in (("photo.jpg", "magenta"), ("example.jpg", "blue"), ("a.jpg", "purple"), ("b.png", "brown")):
        write_png(tmp_path / name, colour)
    monkeypatch.chdir(tmp_path)
    count = len(server[1].library)
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - our own documentation
    assert len(server[1].library) == count + 3 - 1  # photo.jpg, a.jpg and b.png added, the last image deleted


def test_few_shot_endpoints(client: Client, server, tmp_path: Path) -> None:
    app = server[1]
    app.save_label_set("api kinds", "type A, type B")  # names that mean nothing to the colour model
    red = next(e.id for e in app.library if e.name == "red.png")
    blue = next(e.id for e in app.library if e.name == "blue.png")
    examples, ids_box = client.predict("api kinds", "type A", f"#{red}", api_name="/add_example")
    assert examples == {"type A": [red]} and ids_box == ""
    navy = handle_file(str(write_png(tmp_path / "navy.png", (10, 10, 150))))
    examples, _ = client.predict("api kinds", "type B", "", navy, api_name="/add_example")  # an upload
    assert len(examples["type B"]) == 1 and app.image_info(examples["type B"][0]).name == "navy.png"
    zero, adapted, note, best = client.predict(handle_file(str(write_png(tmp_path / "r.png", (240, 30, 30)))),
                                               "api kinds", "single", "tip", api_name="/classify_adapted")
    assert adapted["label"] == "type A" == best and {c["label"] for c in zero["confidences"]} == {"type A", "type B"}
    assert "With your examples" in note
    examples, _ = client.predict("api kinds", "type A", str(red), api_name="/remove_example")
    assert "type A" not in examples
    with pytest.raises(AppError, match="'type Z' is not a label of 'api kinds'"):
        client.predict("api kinds", "type Z", str(red), api_name="/add_example")
    results, message = client.predict("a red thing", str(blue), "", 3, api_name="/search_refine")
    assert [item["caption"].split(" ")[0] for item in results][0] in (f"#{red}", f"#{blue}") and "shown" in message
    with pytest.raises(AppError, match="no positive examples"):
        client.predict("a red thing", "", "", api_name="/search_refine")


def test_the_readme_few_shot_api_example_runs(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, app = server[0], server[1]
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    code = readme.split("## Few-shot: teach a label set with examples", 1)[1].split("```python", 1)[1]
    code = code.split("```", 1)[0]
    assert 'Client("http://127.0.0.1:7860/")' in code
    code = code.replace('Client("http://127.0.0.1:7860/")', f"Client({url!r}, auth={AUTH!r}, verbose=False)")
    app.save_label_set("receipts", "receipt, invoice")
    for name, colour in (("receipt.jpg", "yellow"), ("photo.jpg", "orange")):
        write_png(tmp_path / name, colour)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - our own documentation
    assert app.label_examples("receipts")["invoice"]
