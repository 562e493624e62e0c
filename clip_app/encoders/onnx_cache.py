"""The ONNX export cache: CLIP's towers exported once per model and versions, verified against PyTorch, kept
under the weights folder with a manifest (sha256 and size of every file), rebuilt when damaged.

Layout: <model-dir>/onnx/<model>-<key>/{image.onnx, text.onnx, [image.int8.onnx, text.int8.onnx],
manifest.json, .lock}. The key hashes the model identity and the versions that change an export (torch,
onnxruntime, opset, EXPORT_CODE_VERSION). Files are written atomically, the manifest last; a file lock keeps two
exporting processes apart (the second one waits, then finds the finished export).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..files import replace_atomically, sha256_file
from .clip_torch import has_causal_text_tower, trim_tokens
from .onnx_export import (
    EXPORT_CODE_VERSION,
    IMAGE_INPUT,
    OPSET,
    TEXT_INPUT,
    ImageTower,
    OnnxExportError,
    TextTower,
    export_image_tower,
    export_text_tower,
    quantize_int8,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MIN_COSINE = {"fp32": 0.9999, "int8": 0.95}  #: the least probe agreement with PyTorch an export must reach
PROBE_TEXTS = ("a photo of a dog", "", "a diagram", "a red car parked in the snow next to a small wooden house",
               " ".join(["a very long caption that goes on"] * 20))
TOWERS = ("image", "text")


@dataclass(frozen=True)
class ExportedTowers:
    """The verified ONNX files of one model at one precision, and what the manifest says about them."""

    folder: Path
    image: Path
    text: Path
    manifest: dict


def cache_key(identity: str) -> dict:
    """Everything an export depends on: the model identity and the versions of the tools and of this code."""
    import onnxruntime

    return {"identity": identity, "torch": torch.__version__.split("+")[0], "onnxruntime": onnxruntime.__version__,
            "opset": OPSET, "export_code": EXPORT_CODE_VERSION}


def cache_folder(model_dir: Path, identity: str) -> Path:
    """<model-dir>/onnx/<readable model>-<16 hex digits of the key>."""
    key = hashlib.sha256(json.dumps(cache_key(identity), sort_keys=True).encode()).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", identity.split(":")[-1][:12] if identity.startswith("sha256:")
                      else identity).strip("-") or "model"
    return Path(model_dir).expanduser() / "onnx" / f"{readable}-{key}"


def file_names(precision: str) -> dict[str, str]:
    """Tower -> file name: image.onnx/text.onnx, or image.int8.onnx/text.int8.onnx."""
    suffix = "" if precision == "fp32" else f".{precision}"
    return {tower: f"{tower}{suffix}.onnx" for tower in TOWERS}


def probe_images(resolution: int) -> list[Image.Image]:
    """Three fixed pictures (smooth colour, stripes, seeded grain) at about the tower's size."""
    rng = np.random.default_rng(1234)
    side = max(resolution, 32)
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    smooth = np.stack([ramp[None, :].repeat(side, 0), ramp[:, None].repeat(side, 1),
                       np.full((side, side), 90, np.float32)], -1)
    stripes = np.zeros((side, side, 3), np.float32)
    stripes[:, ::8] = (250, 40, 40)
    grain = rng.integers(0, 256, (side, side, 3)).astype(np.float32)
    return [Image.fromarray(a.astype(np.uint8)) for a in (smooth, stripes, grain)]


def load_or_export(model: torch.nn.Module, identity: str, model_dir: Path, precision: str,
                   preprocess: Callable[[Image.Image], torch.Tensor], tokenize: Callable[..., torch.Tensor],
                   resolution: int, open_session: Callable[[Path], object]) -> ExportedTowers:
    """The cached export of `model` at `precision`, exporting (and verifying) it first when it is missing or
    damaged. OnnxExportError when it cannot be exported or disagrees with PyTorch (the caller uses PyTorch)."""
    from filelock import FileLock

    folder = cache_folder(model_dir, identity)
    folder.mkdir(parents=True, exist_ok=True)
    names = file_names(precision)
    with FileLock(str(folder / ".lock")):
        manifest = read_manifest(folder)
        refused = manifest.get("refused", {}).get(precision)
        if refused:
            raise OnnxExportError(f"this export was refused before ({refused}); delete {folder} to try again")
        problem, refreshed = check_files(folder, manifest, names.values())
        if problem is None:
            if refreshed:
                _write_manifest(folder, manifest)
            return ExportedTowers(folder, folder / names["image"], folder / names["text"], manifest)
        if problem != "missing":
            log.warning("the cached ONNX export in %s is damaged (%s): exporting again", folder, problem)
        manifest = _export_all(model, identity, folder, manifest, precision, preprocess, tokenize, resolution,
                               open_session)
        return ExportedTowers(folder, folder / names["image"], folder / names["text"], manifest)


def find_cached(model_dir: Path, identity: str, precision: str) -> ExportedTowers | None:
    """The verified export of a model when the cache holds it intact with the model's facts (input size, width),
    else None (nothing is exported or repaired here: load_or_export does that, with the PyTorch model)."""
    from filelock import FileLock

    folder = cache_folder(model_dir, identity)
    if not (folder / MANIFEST).is_file():
        return None
    names = file_names(precision)
    with FileLock(str(folder / ".lock")):
        manifest = read_manifest(folder)
        if "model" not in manifest or manifest.get("refused", {}).get(precision):
            return None
        problem, refreshed = check_files(folder, manifest, names.values())
        if problem is not None:
            return None
        if refreshed:
            _write_manifest(folder, manifest)
    return ExportedTowers(folder, folder / names["image"], folder / names["text"], manifest)


def read_manifest(folder: Path) -> dict:
    """The manifest of a cache folder, or {} when it is missing or unreadable."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return manifest if isinstance(manifest, dict) else {}
    except (OSError, ValueError):
        return {}


def damage(folder: Path, manifest: dict, names) -> str | None:
    """None when every named file is intact (see check_files), 'missing' when the manifest does not list them
    (never exported), else what is wrong."""
    return check_files(folder, manifest, names)[0]


def check_files(folder: Path, manifest: dict, names) -> tuple[str | None, bool]:
    """(problem, refreshed): each file must have the manifest's size and sha256. A file whose (inode, mtime, size)
    signature is the one recorded when its sha256 was last checked is not hashed again (a start then costs a stat,
    not reading 600 MB); any rewrite, copy or truncation changes the signature, and the file is hashed. refreshed:
    signatures of files whose hash matched were updated in `manifest` (the caller saves it)."""
    from concurrent.futures import ThreadPoolExecutor

    files = manifest.get("files", {})
    names = list(names)
    if not all(name in files for name in names):
        return "missing", False
    signatures = {}
    for name in names:
        try:
            signatures[name] = _signature(folder / name)
        except OSError:
            return f"{name} is missing", False
        if signatures[name][2] != files[name]["size"]:
            return f"{name} has {signatures[name][2]} bytes, the manifest says {files[name]['size']}", False
    unchecked = [name for name in names if files[name].get("signature") != signatures[name]]
    if not unchecked:
        return None, False
    with ThreadPoolExecutor(len(unchecked)) as pool:  # hashlib releases the GIL: the files are hashed side by side
        digests = list(pool.map(lambda name: _sha256(folder / name), unchecked))
    for name, digest in zip(unchecked, digests):
        if digest != files[name]["sha256"]:
            return f"{name} does not match its sha256", False
    for name in unchecked:
        files[name]["signature"] = signatures[name]
    return None, True


def _signature(path: Path) -> list[int]:
    """[inode, mtime in ns, size] of a file."""
    st = path.stat()
    return [st.st_ino, st.st_mtime_ns, st.st_size]


def _sha256(path: Path) -> str:
    return sha256_file(path, chunk=1 << 22)


def _export_all(model: torch.nn.Module, identity: str, folder: Path, manifest: dict, precision: str,
                preprocess: Callable[[Image.Image], torch.Tensor], tokenize: Callable[..., torch.Tensor],
                resolution: int, open_session: Callable[[Path], object]) -> dict:
    """Export (fp32, then int8 when asked) into a scratch folder, verify, move into place, then the manifest."""
    started = time.perf_counter()
    pixels = torch.stack([preprocess(image) for image in probe_images(resolution)]).float()
    tokens = tokenize(list(PROBE_TEXTS), truncate=True)
    manifest = {**manifest, "key": cache_key(identity)}
    manifest.setdefault("files", {})
    manifest.setdefault("cosine", {})
    manifest.setdefault("export_seconds", {})
    with tempfile.TemporaryDirectory(prefix=".export-", dir=folder) as scratch_name:
        scratch = Path(scratch_name)
        fp32 = file_names("fp32")
        fp32_ok = damage(folder, manifest, fp32.values()) is None
        if fp32_ok:  # an int8 export reuses the verified fp32 files
            sources = {tower: folder / name for tower, name in fp32.items()}
        else:
            sources = {tower: scratch / name for tower, name in fp32.items()}
            log.info("exporting %s to ONNX (once; cached in %s)", identity, folder)
            export_image_tower(model, sources["image"], resolution)
            export_text_tower(model, sources["text"])
        outputs = dict(sources)
        if precision != "fp32":
            outputs = {tower: scratch / name for tower, name in file_names(precision).items()}
            for tower in TOWERS:
                quantize_int8(sources[tower], outputs[tower])
        cosine = verify(model, outputs, pixels, tokens, open_session)
        dim = cosine.pop("dim", None)
        if cosine["image"] < MIN_COSINE[precision] or cosine["text"] < MIN_COSINE[precision]:
            reason = (f"ONNX Runtime and PyTorch disagree on the probe: cosine image {cosine['image']:.6f}, text "
                      f"{cosine['text']:.6f} (at least {MIN_COSINE[precision]} needed)")
            manifest.setdefault("refused", {})[precision] = reason
            _write_manifest(folder, manifest)
            raise OnnxExportError(reason)
        written = {tower: path for tower, path in outputs.items() if path.parent == scratch}
        if not fp32_ok and precision != "fp32":
            written.update(sources)
        for path in written.values():
            _move_in(path, folder / path.name)
            manifest["files"][path.name] = {"sha256": _sha256(folder / path.name),
                                            "size": (folder / path.name).stat().st_size,
                                            "signature": _signature(folder / path.name)}
    manifest["cosine"][precision] = cosine
    manifest["model"] = {"input_resolution": int(resolution), "dim": int(dim),
                         "causal": has_causal_text_tower(model)}
    manifest["export_seconds"][precision] = round(time.perf_counter() - started, 2)
    _write_manifest(folder, manifest)
    log.info("exported %s to ONNX %s in %.1f s (probe cosine vs PyTorch: image %.6f, text %.6f)", identity,
             precision, manifest["export_seconds"][precision], cosine["image"], cosine["text"])
    return manifest


def verify(model: torch.nn.Module, paths: dict[str, Path], pixels: torch.Tensor, tokens: torch.Tensor,
           open_session: Callable[[Path], object]) -> dict[str, float]:
    """Least cosine over the probe rows between PyTorch and ONNX Runtime features, per tower."""
    if has_causal_text_tower(model):
        tokens = trim_tokens(tokens)
    with torch.inference_mode():
        want = {"image": ImageTower(model)(pixels), "text": TextTower(model)(tokens)}
    got = {"image": open_session(paths["image"]).run(None, {IMAGE_INPUT: pixels.numpy()})[0],
           "text": open_session(paths["text"]).run(None, {TEXT_INPUT: tokens.numpy()})[0]}
    agreement: dict = {tower: float(torch.nn.functional.cosine_similarity(
        want[tower].float(), torch.from_numpy(got[tower]).float()).min()) for tower in TOWERS}
    agreement["dim"] = int(want["text"].shape[-1])
    return agreement


def _move_in(source: Path, target: Path) -> None:
    """Copy a finished file into the cache atomically (temp file in the same folder, fsync, rename)."""
    import shutil

    with open(source, "rb") as handle:
        replace_atomically(target, lambda out: shutil.copyfileobj(handle, out, 1 << 22))


def _write_manifest(folder: Path, manifest: dict) -> None:
    data = json.dumps(manifest, indent=2, sort_keys=True).encode()
    replace_atomically(folder / MANIFEST, lambda out: out.write(data))
