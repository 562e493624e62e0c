"""The ONNX Runtime engine: export and load (ViT and ResNet), agreement with PyTorch, the export cache (reuse,
damage, refusal), int8, a missing onnxruntime, and concurrent encodes."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import threading
from pathlib import Path

import pytest
import torch

from clip_app.encoders import ClipEncoder, onnx_cache
from clip_app.encoders.onnx_cache import cache_folder, read_manifest
from tests.support.fakes import solid_image
from tests.support.threads import run_in_threads

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TEXTS = ["a red thing", "blue", "", "a photo of a dog sitting on a green sofa in the afternoon sun " * 8]
COLOURS = ("red", "green", "blue", "white", "black")


def _images(count: int = 5) -> list:
    return [solid_image(COLOURS[i % len(COLOURS)], size=(40 + 7 * i, 33 + 3 * i)) for i in range(count)]


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b)


@pytest.mark.parametrize("variant", ["vit", "resnet"])
def test_export_loads_and_agrees_with_torch(onnx_exports: dict, variant: str) -> None:
    torch_encoder, onnx_encoder = onnx_exports[variant]["torch"], onnx_exports[variant]["onnx"]
    assert torch_encoder.backend == "torch" and onnx_encoder.backend == "onnx"
    assert onnx_encoder.precision == "fp32" and "ONNX Runtime fp32" in onnx_encoder.backend_name
    assert onnx_encoder.identity == torch_encoder.identity and onnx_encoder.identity.startswith("sha256:")
    images = _images()
    assert _cosines(torch_encoder.encode_images(images), onnx_encoder.encode_images(images)).min() >= 0.9999
    # batch sizes the export never saw (1 and 5), texts of different lengths (the dynamic sequence axis)
    single = onnx_encoder.encode_pixels(torch.stack([onnx_encoder.preprocess(images[0])]))
    assert _cosines(single, torch_encoder.encode_images(images[:1])).min() >= 0.9999
    got, want = onnx_encoder.encode_texts(TEXTS), torch_encoder.encode_texts(TEXTS)
    assert got.shape == (len(TEXTS), onnx_encoder.dim) and got.dtype == torch.float32
    assert _cosines(got, want).min() >= 0.9999
    assert torch.allclose(got.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)
    folder = cache_folder(onnx_exports["model_dir"], onnx_encoder.identity)
    manifest = read_manifest(folder)
    assert {"image.onnx", "text.onnx"} <= set(manifest["files"])  # (int8 files too when a test asked for them)
    assert manifest["cosine"]["fp32"]["image"] >= 0.9999 and manifest["key"]["identity"] == onnx_encoder.identity
    for name, entry in manifest["files"].items():
        assert (folder / name).stat().st_size == entry["size"]


def _forbid_export(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_cache, "export_image_tower", fail)
    monkeypatch.setattr(onnx_cache, "export_text_tower", fail)


def test_second_load_exports_nothing_and_needs_no_pytorch_weights(onnx_exports: dict,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import clip

    _forbid_export(monkeypatch)
    loads: list[str] = []
    real_load = clip.load
    monkeypatch.setattr(clip, "load", lambda *args, **kwargs: loads.append("load") or real_load(*args, **kwargs))
    vit = onnx_exports["vit"]
    again = ClipEncoder(str(vit["checkpoint"]), device="cpu", backend="onnx", download_root=onnx_exports["model_dir"])
    assert again.backend == "onnx" and again.dim == vit["torch"].dim and again.identity == vit["torch"].identity
    assert again.input_resolution == vit["torch"].input_resolution
    images = _images(3)
    assert torch.equal(again.encode_images(images), vit["onnx"].encode_images(images))
    assert _cosines(again.encode_texts(TEXTS), vit["torch"].encode_texts(TEXTS)).min() >= 0.9999
    assert loads == []  # started from the cache alone: the checkpoint's weights were never loaded
    assert isinstance(again.model, torch.nn.Module) and loads == ["load"]  # ... until something asks for them


def _copy_exporting(monkeypatch: pytest.MonkeyPatch, source: Path, calls: list[str]) -> None:
    """Replace torch.onnx export by a copy of the session's good files (the export itself is tested above)."""
    def image(model, path, resolution):
        calls.append("image")
        shutil.copyfile(source / "image.onnx", path)

    def text(model, path, context_length=77):
        calls.append("text")
        shutil.copyfile(source / "text.onnx", path)

    monkeypatch.setattr(onnx_cache, "export_image_tower", image)
    monkeypatch.setattr(onnx_cache, "export_text_tower", text)


def test_a_truncated_cached_file_is_exported_again(onnx_exports: dict, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    vit = onnx_exports["vit"]
    good = cache_folder(onnx_exports["model_dir"], vit["onnx"].identity)
    model_dir = tmp_path / "models"
    folder = cache_folder(model_dir, vit["onnx"].identity)
    shutil.copytree(good, folder)
    size = (folder / "text.onnx").stat().st_size
    with open(folder / "text.onnx", "r+b") as handle:
        handle.truncate(size // 2)
    calls: list[str] = []
    _copy_exporting(monkeypatch, good, calls)
    with caplog.at_level(logging.WARNING):
        encoder = ClipEncoder(str(vit["checkpoint"]), device="cpu", backend="onnx", download_root=model_dir)
    assert encoder.backend == "onnx" and sorted(calls) == ["image", "text"]
    assert "damaged" in caplog.text and "text.onnx has" in caplog.text
    assert (folder / "text.onnx").stat().st_size == size
    assert _cosines(encoder.encode_texts(TEXTS), vit["torch"].encode_texts(TEXTS)).min() >= 0.9999
    assert not list(folder.glob(".*.tmp")) and not list(folder.glob(".export-*"))  # no scratch left behind


def test_a_changed_byte_is_detected_by_the_sha256(onnx_exports: dict, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    vit = onnx_exports["vit"]
    good = cache_folder(onnx_exports["model_dir"], vit["onnx"].identity)
    folder = cache_folder(tmp_path / "models", vit["onnx"].identity)
    shutil.copytree(good, folder)
    data = bytearray((folder / "image.onnx").read_bytes())
    data[-100] ^= 0xFF
    (folder / "image.onnx").write_bytes(bytes(data))
    calls: list[str] = []
    _copy_exporting(monkeypatch, good, calls)
    with caplog.at_level(logging.WARNING):
        encoder = ClipEncoder(str(vit["checkpoint"]), device="cpu", backend="onnx", download_root=tmp_path / "models")
    assert encoder.backend == "onnx" and calls
    assert "image.onnx does not match its sha256" in caplog.text
    assert (folder / "image.onnx").read_bytes() == (good / "image.onnx").read_bytes()


def test_an_export_that_disagrees_is_refused_and_torch_is_used(onnx_exports: dict, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    vit = onnx_exports["vit"]
    good = cache_folder(onnx_exports["model_dir"], vit["onnx"].identity)
    calls: list[str] = []
    _copy_exporting(monkeypatch, good, calls)
    monkeypatch.setattr(onnx_cache, "verify", lambda *args: {"image": 0.99999, "text": 0.93})
    with caplog.at_level(logging.WARNING):
        encoder = ClipEncoder(str(vit["checkpoint"]), device="cpu", backend="onnx", download_root=tmp_path / "m")
    assert encoder.backend == "torch" and calls
    assert "disagree" in caplog.text and "text 0.930000" in caplog.text and "PyTorch backend" in caplog.text
    folder = cache_folder(tmp_path / "m", vit["onnx"].identity)
    assert not (folder / "image.onnx").exists()  # nothing unverified is kept
    assert "fp32" in read_manifest(folder)["refused"]
    calls.clear()
    again = ClipEncoder(str(vit["checkpoint"]), device="cpu", backend="onnx", download_root=tmp_path / "m")
    assert again.backend == "torch" and not calls  # the refusal is remembered: no second export


def test_int8_quantises_the_cached_fp32_export(onnx_exports: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    _forbid_export(monkeypatch)  # int8 starts from the verified fp32 files
    vit = onnx_exports["vit"]
    encoder = ClipEncoder(str(vit["checkpoint"]), device="cpu", backend="onnx", precision="int8",
                          download_root=onnx_exports["model_dir"])
    assert encoder.backend == "onnx" and encoder.precision == "int8"
    assert encoder.identity == vit["torch"].identity  # the backend and precision never change the identity
    manifest = read_manifest(cache_folder(onnx_exports["model_dir"], encoder.identity))
    assert {"image.int8.onnx", "text.int8.onnx", "image.onnx", "text.onnx"} <= set(manifest["files"])
    images = _images()
    rows = encoder.encode_images(images)
    assert _cosines(rows, vit["torch"].encode_images(images)).min() >= 0.95
    assert not torch.allclose(rows, vit["onnx"].encode_images(images), atol=1e-6)  # really other weights
    assert manifest["cosine"]["int8"]["text"] >= 0.95


def test_onnxruntime_missing_means_torch_with_a_log_line(tiny_checkpoint: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    for backend in ("onnx", "auto"):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            encoder = ClipEncoder(str(tiny_checkpoint), device="cpu", backend=backend, download_root=tmp_path)
        assert encoder.backend == "torch"
        assert "onnxruntime is not installed: using the PyTorch backend" in caplog.text
        assert "backend torch (PyTorch fp32)" in caplog.text  # the start-up line names the backend
    assert not (tmp_path / "onnx").exists()


def test_auto_and_the_environment_choose_the_backend(tiny_checkpoint: Path, onnx_exports: dict,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _forbid_export(monkeypatch)
    model_dir = onnx_exports["model_dir"]
    monkeypatch.setenv("CLIP_APP_BACKEND", "auto")
    assert ClipEncoder(str(tiny_checkpoint), device="cpu", download_root=model_dir).backend == "onnx"
    monkeypatch.setenv("CLIP_APP_BACKEND", "torch")
    assert ClipEncoder(str(tiny_checkpoint), device="cpu", download_root=model_dir).backend == "torch"
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        ClipEncoder(str(tiny_checkpoint), device="cpu", backend="tensorrt")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        ClipEncoder(str(tiny_checkpoint), device="cpu", backend="onnx", precision="fp8")


def test_eight_threads_share_the_sessions_and_get_the_same_features(onnx_exports: dict) -> None:
    vit = onnx_exports["vit"]
    encoder = ClipEncoder(str(vit["checkpoint"]), device="cpu", backend="onnx", batch_size=3,
                          download_root=onnx_exports["model_dir"])
    images = _images(6)
    texts = [[f"{colour} thing number {t}-{i}" for i, colour in enumerate(COLOURS)] for t in range(8)]
    reference = ClipEncoder(str(vit["checkpoint"]), device="cpu", backend="onnx",
                            download_root=onnx_exports["model_dir"])
    want_images = reference.encode_images(images, batch_size=3)
    want_texts = [reference.encode_texts(batch) for batch in texts]
    got: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    start = threading.Barrier(8)

    def work(index: int) -> None:
        start.wait()
        for _ in range(3):
            got[index] = (encoder.encode_images(images), encoder.encode_texts(texts[index]))

    errors = run_in_threads(work, [(i,) for i in range(8)])
    assert not errors and len(got) == 8
    for index, (image_rows, text_rows) in got.items():
        assert torch.allclose(image_rows, want_images, atol=1e-6)
        assert torch.allclose(text_rows, want_texts[index], atol=1e-6)


def test_concurrent_exports_do_not_corrupt_each_other(onnx_exports: dict, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    vit = onnx_exports["vit"]
    good = cache_folder(onnx_exports["model_dir"], vit["onnx"].identity)
    calls: list[str] = []
    _copy_exporting(monkeypatch, good, calls)
    encoders: list[ClipEncoder] = []

    def load() -> None:
        encoders.append(ClipEncoder(str(vit["checkpoint"]), device="cpu", backend="onnx",
                                    download_root=tmp_path / "shared"))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [e.backend for e in encoders] == ["onnx"] * 3
    assert sorted(calls) == ["image", "text"]  # one exported; the others waited for the lock and reused it
    manifest = json.loads((cache_folder(tmp_path / "shared", vit["onnx"].identity) / "manifest.json").read_text())
    assert {"image.onnx", "text.onnx"} <= set(manifest["files"])  # (int8 files too when a test asked for them)


def test_an_unchanged_cache_is_not_hashed_again(onnx_exports: dict, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    vit = onnx_exports["vit"]
    folder = cache_folder(tmp_path / "models", vit["onnx"].identity)
    shutil.copytree(cache_folder(onnx_exports["model_dir"], vit["onnx"].identity), folder)  # new inodes
    hashed: list[str] = []
    real = onnx_cache._sha256
    monkeypatch.setattr(onnx_cache, "_sha256", lambda path: hashed.append(path.name) or real(path))
    _forbid_export(monkeypatch)
    for _ in range(2):
        encoder = ClipEncoder(str(vit["checkpoint"]), device="cpu", backend="onnx", download_root=tmp_path / "models")
        assert encoder.backend == "onnx"
    assert sorted(hashed) == ["image.onnx", "text.onnx"]  # the copies once (their signature is new), then never
    (folder / "text.onnx").write_bytes((folder / "text.onnx").read_bytes())  # same bytes, a new mtime
    hashed.clear()
    assert ClipEncoder(str(vit["checkpoint"]), device="cpu", backend="onnx",
                       download_root=tmp_path / "models").backend == "onnx"
    assert hashed == ["text.onnx"]
