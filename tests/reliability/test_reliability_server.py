"""The running server, started through app.py's own flags: --auth guards every route that serves data or runs code,
uploads over --max-file-size are refused, no file outside the gallery and Gradio's cache is served (traversal,
encoded, absolute and symlinked paths), the default bind address is 127.0.0.1, and a bad library stops the app."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import torch
from gradio_client import Client

import app as launcher
from clip_app import ui
from clip_app.config import Settings
from clip_app.library import FeatureLibrary
from clip_app.service import App
from tests.reliability.test_reliability_hostile_files import Payload
from tests.support.app_helpers import free_port, write_png
from tests.support.fakes import color_encoder
from tests.support.library_helpers import image_bytes
from tests.support.reliability_helpers import folder_state

ROOT = Path(launcher.__file__).resolve().parent
USER, PASSWORD = "ada", "lovelace-1815"
LIMIT = 2048  # --max-file-size 2KB


def serve(args: argparse.Namespace) -> tuple[object, App, Settings]:
    """Launch a colour-model App the way app.py does, from parsed flags; returns (demo, app, settings)."""
    settings = Settings.from_args(args)
    encoder = color_encoder()
    app = App(encoder, FeatureLibrary(settings.gallery_dir, settings.library_file, encoder),
              max_file_size=args.max_file_size)
    demo = ui.build_demo(app)
    launcher.launch(demo, args, settings, prevent_thread_lock=True)
    return demo, app, settings


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, App, Path]]:
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    args = launcher.parse_args(["--auth", f"{USER}:{PASSWORD}", "--max-file-size", "2KB", "--port", str(port),
                                "--gallery", str(root / "gallery"), "--library", str(root / "features_library.pth")])
    demo, app, _ = serve(args)
    app.add_images([write_png(root / "inbox" / f"{c}.png", c) for c in ("red", "green", "blue")])
    (root / "secret.txt").write_text("top secret")
    write_png(root / "private" / "secret.png", "yellow")
    os.symlink(root / "private" / "secret.png", root / "gallery" / "000099.png")
    os.symlink("/etc", root / "gallery" / "etc")
    try:
        yield f"http://127.0.0.1:{port}/", app, root
    finally:
        demo.close()


@contextmanager
def logged_in(url: str) -> Iterator[httpx.Client]:
    """An HTTP client with a session cookie from /login."""
    with httpx.Client(base_url=url, timeout=60) as http:
        assert http.post("login", data={"username": USER, "password": PASSWORD}).status_code == 200
        yield http


SEARCH = {"data": ["a red thing", 2], "fn_index": 0, "session_hash": "s", "event_id": "e"}


def guarded_routes(gallery_file: Path) -> list[tuple[str, str]]:
    return [("GET", "config"), ("GET", "gradio_api/info"), ("GET", "gradio_api/openapi.json"),
            ("GET", f"gradio_api/file={gallery_file}"), ("GET", f"gradio_api/file/{gallery_file}"),
            ("POST", "gradio_api/upload"), ("GET", "gradio_api/upload_progress?upload_id=x"),
            ("POST", "gradio_api/call/search"), ("POST", "gradio_api/call/v2/search"),
            ("GET", "gradio_api/call/search/e"), ("POST", "gradio_api/run/search"), ("POST", "gradio_api/api/search"),
            ("POST", "gradio_api/queue/join"), ("GET", "gradio_api/queue/data?session_hash=s"),
            ("GET", "gradio_api/proxy=http://example.com/"), ("GET", "gradio_api/deep_link?session_hash=s"),
            ("POST", "gradio_api/process_recording"), ("GET", "gradio_api/login_check")]


def test_auth_guards_every_route_that_serves_data_or_runs_code(server) -> None:
    url, app, root = server
    gallery_file = next(iter(app.library)).path
    with httpx.Client(base_url=url, timeout=60) as anonymous:
        for method, path in guarded_routes(gallery_file):
            answer = anonymous.request(method, path, json=SEARCH if method == "POST" else None)
            assert answer.status_code == 401, (method, path, answer.status_code)
        page = anonymous.get("").text  # the login page: no images, no paths, no library data
        assert '"auth_required":true' in page and str(root) not in page and "000001" not in page
        assert anonymous.post("login", data={"username": USER, "password": "wrong"}).status_code == 400
        assert anonymous.get("config").status_code == 401
    with pytest.raises(Exception):  # noqa: B017 - the client cannot even read the app's config
        Client(url, verbose=False, analytics_enabled=False)
    with logged_in(url) as http:  # the same routes with credentials
        assert http.get("config").status_code == 200 and http.get("gradio_api/info").status_code == 200
        assert http.get(f"gradio_api/file={gallery_file}").content == gallery_file.read_bytes()
        event = http.post("gradio_api/call/search", json={"data": ["a red thing", 2, 0.0]}).json()["event_id"]
        answer = http.get(f"gradio_api/call/search/{event}").text
        assert "event: complete" in answer and '"caption": "#1 ' in answer
    client = Client(url, auth=(USER, PASSWORD), verbose=False, analytics_enabled=False)
    assert client.predict("a blue thing", 1, api_name="/search")[0][0]["caption"].startswith("#3 · ")


def test_uploads_over_the_size_limit_are_refused(server) -> None:
    url, app, root = server
    before = folder_state(root / "gallery")
    with logged_in(url) as http:
        small = http.post("gradio_api/upload", files={"files": ("ok.png", b"x" * (LIMIT - 100), "image/png")})
        assert small.status_code == 200
        cached = small.json()[0]
        assert http.get(f"gradio_api/file={cached}").status_code == 200  # Gradio's cache is served
        big = http.post("gradio_api/upload", files={"files": ("big.png", b"x" * (LIMIT + 1), "image/png")})
        assert big.status_code == 413 and "maximum allowed size" in big.text

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
            yield b'--B\r\nContent-Disposition: form-data; name="files"; filename="c.png"\r\n'
            yield b"Content-Type: image/png\r\n\r\n"
            for _ in range(100):
                yield b"y" * 1000
            yield b"\r\n--B--\r\n"

        chunked = http.post("gradio_api/upload", content=chunks(),
                            headers={"Content-Type": "multipart/form-data; boundary=B"})
        assert chunked.status_code == 413
    assert folder_state(root / "gallery") == before


def test_no_file_outside_the_gallery_and_the_cache_is_served(server) -> None:
    url, app, root = server
    gallery = root / "gallery"
    gallery_file = next(iter(app.library)).path
    refused = [
        "gradio_api/file=/etc/passwd", "gradio_api/file//etc/passwd", "gradio_api/file/etc/passwd",
        "gradio_api/file=%2Fetc%2Fpasswd", "gradio_api/file=../../../../../../etc/passwd",
        "gradio_api/file=..%2f..%2f..%2f..%2f..%2fetc%2fpasswd", "gradio_api/file=%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        f"gradio_api/file={gallery}/../secret.txt", f"gradio_api/file={gallery}/..%2Fsecret.txt",
        f"gradio_api/file={gallery}/%2e%2e/secret.txt", f"gradio_api/file={gallery}%2F..%2Fsecret.txt",
        f"gradio_api/file={gallery}/%252e%252e/secret.txt", f"gradio_api/file=file://{root}/secret.txt",
        f"gradio_api/file={root}/features_library.pth", f"gradio_api/file={root}/private/secret.png",
        f"gradio_api/file={gallery}/000099.png",  # a symlink in the gallery pointing outside it
        f"gradio_api/file={gallery}/etc/passwd",  # a symlinked folder
        f"gradio_api/file={ROOT}/app.py", f"gradio_api/file={Path(torch.__file__)}",
        "gradio_api/file=gallery/../../../etc/passwd", "file=/etc/passwd", "file/etc/passwd",
        "assets/../../../../etc/passwd", "assets/..%2f..%2f..%2f..%2fetc%2fpasswd", "static/../../../etc/passwd",
        "gradio_api/proxy=file:///etc/passwd", "gradio_api/proxy=http://127.0.0.1:22/",
    ]
    with logged_in(url) as http:
        assert http.get(f"gradio_api/file={gallery_file}").status_code == 200  # the route works: the test can fail
        for path in refused:
            answer = http.get(path)
            assert 400 <= answer.status_code < 500, (path, answer.status_code)
            assert b"root:" not in answer.content and b"top secret" not in answer.content, path
    port = int(url.rsplit(":", 1)[1].strip("/"))
    with logged_in(url) as http:
        cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
    for raw in ("/gradio_api/file=/etc/passwd", f"/gradio_api/file={gallery}/../secret.txt",
                "/gradio_api/file=../../../../../../etc/passwd", "/assets/../../../../../etc/passwd"):
        status, body = raw_get(port, raw, cookie)  # sent as written: no client-side normalisation of ../
        assert status.startswith((b"HTTP/1.1 4",)), (raw, status)
        assert b"root:" not in body and b"top secret" not in body


def raw_get(port: int, path: str, cookie: str) -> tuple[bytes, bytes]:
    """(status line, whole response) of a GET sent byte for byte."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.split(b"\r\n", 1)[0], data


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a socket listening on this TCP port (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                if len(address) == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]))
                else:
                    words = [bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, 32, 8)]
                    found.add(socket.inet_ntop(socket.AF_INET6, b"".join(words)))
    return found


def outside_address() -> str | None:
    """This machine's address on its main network interface, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def reachable(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=5):
            return True
    except OSError:
        return False


def test_the_default_bind_address_is_this_machine_only(tmp_path: Path) -> None:
    assert launcher.parse_args([]).host == "127.0.0.1"
    outside = outside_address()
    for host_flags, expected in (([], {"127.0.0.1"}), (["--host", "0.0.0.0"], {"0.0.0.0"})):
        port = free_port()
        args = launcher.parse_args([*host_flags, "--port", str(port), "--gallery", str(tmp_path / "g"),
                                    "--library", str(tmp_path / "l.pth")])
        demo, _, _ = serve(args)
        try:
            assert listening_addresses(port) == expected
            assert reachable("127.0.0.1", port)
            if outside:  # the control (0.0.0.0) shows the check can fail
                assert reachable(outside, port) == (expected == {"0.0.0.0"}), (outside, expected)
        finally:
            demo.close()


@pytest.mark.parametrize("kind", ["garbage", "truncated", "payload"])
def test_the_app_and_the_command_line_refuse_to_start_with_a_bad_library(tmp_path: Path, tiny_checkpoint: Path,
                                                                         tiny_encoder, kind: str, capsys) -> None:
    library_file = tmp_path / "features_library.pth"
    FeatureLibrary(tmp_path / "gallery", library_file, tiny_encoder).add([(image_bytes("red"), "red.png")])
    marker = tmp_path / "PWNED"
    if kind == "garbage":
        library_file.write_bytes(b"\x89PNG not a library at all" * 10)
    elif kind == "truncated":
        library_file.write_bytes(library_file.read_bytes()[:500])
    else:
        torch.save({"version": 1, "payload": Payload(marker)}, library_file)
    before = folder_state(tmp_path)
    flags = ["--model", str(tiny_checkpoint), "--device", "cpu", "--gallery", str(tmp_path / "gallery"),
             "--library", str(library_file)]
    assert launcher.main([*flags, "--port", str(free_port())]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: the feature library {library_file} cannot be read: ") and "left untouched" in err
    from clip_app.index import main as index_main

    assert index_main([*flags, "check"]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert folder_state(tmp_path) == before and not marker.exists()
    if kind == "payload":  # and the real program, as a user starts it
        run = subprocess.run([sys.executable, str(ROOT / "app.py"), *flags, "--port", str(free_port())],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert run.returncode == 1 and "could run code when loaded, so it is never loaded" in run.stderr
        assert "Traceback" not in run.stderr and not marker.exists()
        assert folder_state(tmp_path) == before
