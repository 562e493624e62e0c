"""app.py: flags, the lazily built `demo`, launch options, and clear failures when the model or library is unusable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gradio as gr
import pytest
import torch

import app as launcher
from clip_app import ui
from clip_app.service import App
from tests.support.app_helpers import write_png

ROOT = Path(launcher.__file__).resolve().parent


def test_defaults_bind_to_this_machine_only() -> None:
    args = launcher.parse_args([])
    assert (args.host, args.port, args.auth, args.share) == ("127.0.0.1", 7860, None, False)
    assert args.max_file_size == 20 * 1024 * 1024


def test_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    args = launcher.parse_args(["--host", "0.0.0.0", "--port", "8000", "--auth", "ada:pa:ss", "--share",
                                "--max-file-size", "5MB", "--model", "m.pt", "--gallery", "g", "--library", "l.pth",
                                "--device", "cpu", "--model-dir", "w"])
    assert (args.host, args.port, args.auth, args.share) == ("0.0.0.0", 8000, ("ada", "pa:ss"), True)
    assert args.max_file_size == 5 * 1024 * 1024
    assert (args.model, args.gallery, args.library, args.device, args.model_dir) == ("m.pt", "g", "l.pth", "cpu", "w")
    monkeypatch.setenv(launcher.AUTH_ENV, "bob:secret")
    assert launcher.parse_args([]).auth == ("bob", "secret")
    assert launcher.parse_args(["--auth", "eve:x"]).auth == ("eve", "x")


@pytest.mark.parametrize("argv", [["--auth", "nopassword"], ["--auth", ":x"], ["--max-file-size", "big"],
                                  ["--max-file-size", "0"]])
def test_bad_flags_stop_with_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        launcher.parse_args(argv)
    assert info.value.code == 2 and "error:" in capsys.readouterr().err


def env_for(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model: Path) -> None:
    monkeypatch.setenv("CLIP_APP_MODEL", str(model))
    monkeypatch.setenv("CLIP_APP_DEVICE", "cpu")
    monkeypatch.setenv("CLIP_APP_GALLERY", str(tmp_path / "gallery"))
    monkeypatch.setenv("CLIP_APP_LIBRARY", str(tmp_path / "lib.pth"))
    monkeypatch.delenv(launcher.AUTH_ENV, raising=False)


def test_demo_is_built_on_first_access_not_at_import(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     tiny_checkpoint: Path) -> None:
    env_for(monkeypatch, tmp_path, tiny_checkpoint)
    monkeypatch.setattr(launcher, "_demo", None)
    assert "demo" not in vars(launcher)
    demo = launcher.demo
    assert isinstance(demo, gr.Blocks) and launcher.demo is demo
    assert "/classify" in demo.get_api_info()["named_endpoints"]
    with pytest.raises(AttributeError):
        launcher.no_such_thing  # noqa: B018


def test_main_launches_with_safe_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         tiny_checkpoint: Path) -> None:
    env_for(monkeypatch, tmp_path, tiny_checkpoint)
    seen: dict = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: seen.update(kwargs))
    assert launcher.main(["--port", "7999", "--auth", "ada:pw", "--max-file-size", "1MB"]) == 0
    assert seen["server_name"] == "127.0.0.1" and seen["server_port"] == 7999 and seen["share"] is False
    assert seen["auth"] == ("ada", "pw") and seen["max_file_size"] == 1024 * 1024
    gallery = (tmp_path / "gallery").resolve()
    thumbs = gallery.parent / "gallery.thumbs"
    assert seen["allowed_paths"][:3] == [str(gallery), str(thumbs), str(ui.UNAVAILABLE_IMAGE)]
    assert all(Path(p).parent == ui.DEMO_GALLERY for p in seen["allowed_paths"][3:])  # the example photos only
    assert seen["state_session_capacity"] == ui.SESSION_CAPACITY


def test_main_fails_clearly_when_the_checkpoint_is_missing(capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    assert launcher.main(["--model", str(tmp_path / "missing.pt"), "--device", "cpu",
                          "--gallery", str(tmp_path / "g"), "--library", str(tmp_path / "l.pth")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: CLIP checkpoint file not found") and "missing.pt" in err


def test_main_refuses_a_library_of_another_model(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                 tiny_checkpoint: Path, colour_encoder) -> None:
    from clip_app.library import FeatureLibrary

    library = FeatureLibrary(tmp_path / "g", tmp_path / "l.pth", colour_encoder)
    library.add([write_png(tmp_path / "red.png", "red")])
    assert launcher.main(["--model", str(tiny_checkpoint), "--device", "cpu", "--gallery", str(tmp_path / "g"),
                          "--library", str(tmp_path / "l.pth")]) == 1
    assert "rebuild" in capsys.readouterr().err


def test_main_starts_with_a_damaged_label_sets_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    tiny_checkpoint: Path) -> None:
    env_for(monkeypatch, tmp_path, tiny_checkpoint)
    (tmp_path / "label_sets.json").write_text('{"version": 1, "sets": [', encoding="utf-8")  # beside lib.pth
    seen: dict = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: seen.update(kwargs))
    assert launcher.main(["--port", "7998"]) == 0 and seen["server_port"] == 7998


def test_main_reports_a_failure_while_building_the_interface(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                             tiny_checkpoint: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import clip_app.ui
    from clip_app.library import LibraryError

    env_for(monkeypatch, tmp_path, tiny_checkpoint)

    def broken(app):
        raise LibraryError("the library went away")

    monkeypatch.setattr(clip_app.ui, "build_demo", broken)
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: pytest.fail("must not launch"))
    assert launcher.main(["--port", "7997"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: the library went away"


def test_python_app_py_exits_1_with_the_message(tmp_path: Path) -> None:
    broken = tmp_path / "broken.pt"
    torch.save({"not": torch.zeros(1)}, broken)
    run = subprocess.run([sys.executable, str(ROOT / "app.py"), "--model", str(broken), "--device", "cpu",
                          "--gallery", str(tmp_path / "g"), "--library", str(tmp_path / "l.pth")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 1
    assert "error: could not load the CLIP checkpoint" in run.stderr and "broken.pt" in run.stderr
    assert "Traceback" not in run.stderr


def test_create_app_uses_the_flags(tmp_path: Path, tiny_checkpoint: Path) -> None:
    args = launcher.parse_args(["--model", str(tiny_checkpoint), "--device", "cpu", "--gallery", str(tmp_path / "g"),
                                "--library", str(tmp_path / "l.pth"), "--max-file-size", "2KB"])
    app = launcher.create_app(args)
    assert isinstance(app, App) and app.max_file_size == 2048 and app.encoder.name == "tiny-clip.pt"


def test_main_fails_clearly_when_the_library_folder_cannot_be_written(capsys: pytest.CaptureFixture[str],
                                                                      tmp_path: Path, tiny_checkpoint: Path) -> None:
    (tmp_path / "plain-file").write_text("not a folder")
    for library in (tmp_path / "plain-file" / "lib.pth", Path("/proc/clip-app-lib.pth")):
        assert launcher.main(["--model", str(tiny_checkpoint), "--device", "cpu", "--gallery", str(tmp_path / "g"),
                              "--library", str(library)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "lock file" in err and str(library) in err
        assert len(err.splitlines()) == 1


def test_gradio_reload_mode_rebuilds_the_demo_with_the_same_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                   tiny_checkpoint: Path) -> None:
    """`gradio app.py -- FLAGS` runs `python app.py FLAGS` (main() serves), then its watcher thread re-runs the file's
    code in __main__: that must build the new demo from FLAGS, not run main() (and sys.exit) a second time."""
    import threading

    from gradio.cli.commands.reload import reload_thread

    monkeypatch.delenv("CLIP_APP_GALLERY", raising=False)
    flags = ["--model", str(tiny_checkpoint), "--device", "cpu", "--gallery", str(tmp_path / "flag-gallery"),
             "--library", str(tmp_path / "l.pth")]
    monkeypatch.setattr(sys, "argv", ["app.py", *flags])
    namespace = {"__name__": "__main__", "__file__": str(ROOT / "app.py")}
    code = compile((ROOT / "app.py").read_text(encoding="utf-8"), str(ROOT / "app.py"), "exec")
    failures: list[BaseException] = []

    def watcher() -> None:  # what gradio.utils.watchfn does
        reload_thread.running_reload = True
        try:
            exec(code, namespace)
        except BaseException as exc:  # noqa: BLE001 - SystemExit included: reported below
            failures.append(exc)

    thread = threading.Thread(target=watcher)
    thread.start()
    thread.join(120)
    assert not failures, failures
    demo = namespace["__getattr__"]("demo")  # what the watcher swaps in: getattr(module, "demo")
    assert isinstance(demo, gr.Blocks)
    texts = [str(block.value) for block in demo.blocks.values() if isinstance(block, gr.Markdown)]
    assert any("flag-gallery" in text for text in texts)  # the App of the flags, not of the defaults
