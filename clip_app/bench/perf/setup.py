"""Inputs of the performance benchmark: random-weight CLIP checkpoints of the real architectures, photo-like
JPEG files and synthetic unit features. Speed does not depend on the weight values, so random weights time
the real models without downloading them."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...encoders import ClipEncoder
from ...encoders.families import parse_model_spec
from ...label_sets import LabelSetStore
from ...library import FeatureLibrary
from ...service import App

log = logging.getLogger(__name__)

#: model name -> clip.model.CLIP(embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
#: context_length, vocab_size, transformer_width, transformer_heads, transformer_layers), as the official
#: checkpoints give them (clip.model.build_model reads the same numbers from a state dict).
ARCHITECTURES: dict[str, tuple] = {
    "ViT-B/32": (512, 224, 12, 768, 32, 77, 49408, 512, 8, 12),
    "ViT-B/16": (512, 224, 12, 768, 16, 77, 49408, 512, 8, 12),
    "ViT-L/14": (768, 224, 24, 1024, 14, 77, 49408, 768, 12, 12),
    "RN50": (1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12),
    "RN101": (512, 224, (3, 4, 23, 3), 64, None, 77, 49408, 512, 8, 12),
}


def random_clip(dims: tuple, seed: int = 0) -> torch.nn.Module:
    """A clip.model.CLIP of these dimensions (see ARCHITECTURES) with seeded random weights: the one builder of
    random-weight CLIP models (the tests' tiny model too)."""
    import clip.model

    torch.manual_seed(seed)
    return clip.model.CLIP(*dims)


def random_checkpoint(model: str, path: Path, seed: int = 0) -> Path:
    """Save a CLIP of `model`'s architecture with random weights (float16, like the official files) at path."""
    if model not in ARCHITECTURES:
        raise ValueError(f"no architecture table for {model!r}: use one of {', '.join(ARCHITECTURES)} "
                         "or --model PATH of a checkpoint")
    net = random_clip(ARCHITECTURES[model], seed)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def random_family_weights(family: str, arch: str, path: Path, seed: int = 0) -> Path:
    """Save an open_clip or Chinese-CLIP model of `arch` with seeded random weights in the family's file format
    (open_clip: a state dict; Chinese-CLIP: {"state_dict": ...}), for `FAMILY:ARCH@path`."""
    import contextlib
    import io

    torch.manual_seed(seed)
    if family == "open_clip":
        import open_clip

        state = open_clip.create_model(arch, pretrained=None, pretrained_text=False).state_dict()
    else:
        from cn_clip.clip.utils import _MODEL_INFO, create_model

        with contextlib.redirect_stdout(io.StringIO()):
            state = {"state_dict": create_model(_MODEL_INFO[arch]["struct"]).state_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def load_encoder(model: str, device: str, workdir: Path, batch_size: int, backend: str = "torch",
                 precision: str = "fp32") -> tuple[ClipEncoder, str, bool]:
    """(encoder, the --model value that loads the same weights, random_weights): a checkpoint file is loaded as it
    is; a model name from ARCHITECTURES (or FAMILY:ARCH of open_clip / Chinese-CLIP) gets random weights saved under
    workdir and loaded by path, the product's own loading path. ONNX exports are cached in workdir/models."""
    spec = parse_model_spec(model)
    if spec.family != "clip":
        if spec.file is not None:
            return ClipEncoder(model, device=device, batch_size=batch_size), model, False
        path = workdir / f"random-{spec.family}-{spec.arch}.pt"
        if not path.is_file():
            log.info("building %s:%s with random weights at %s", spec.family, spec.arch, path)
            random_family_weights(spec.family, spec.arch, path)
        local = f"{spec.family}:{spec.arch}@{path}"
        return ClipEncoder(local, device=device, batch_size=batch_size), local, True
    given = Path(model).expanduser()
    options = {"device": device, "batch_size": batch_size, "backend": backend, "precision": precision,
               "download_root": workdir / "models"}
    if given.is_file():
        return ClipEncoder(str(given), **options), str(given), False
    path = workdir / f"random-{model.replace('/', '-')}.pt"
    if not path.is_file():
        log.info("building %s with random weights at %s", model, path)
        random_checkpoint(model, path)
    return ClipEncoder(str(path), **options), str(path), True


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """A smooth colourful picture with fine grain: compresses about like a photo (not like noise)."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (max(2, height // 40), max(2, width // 40), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(cells).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    grain = rng.integers(-6, 7, (height, width, 1), dtype=np.int16)
    return Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8))


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB image."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_photos(folder: Path, count: int, size: tuple[int, int], seed: int = 0, prefix: str = "photo") -> list[Path]:
    """`count` distinct photo-like JPEG files of `size` in folder (one picture, a different corner mark each)."""
    folder.mkdir(parents=True, exist_ok=True)
    base = photo_like(size[0], size[1], seed)
    paths = []
    for index in range(count):
        image = base.copy()
        mark = Image.new("RGB", (16, 16), ((index * 37) % 256, (index * 91) % 256, (index * 53 + seed) % 256))
        image.paste(mark, (16 * (index % max(1, size[0] // 16 - 1)), 0))
        path = folder / f"{prefix}-{index:05d}.jpg"
        path.write_bytes(jpeg_bytes(image))
        paths.append(path)
    return paths


def unit_features(n: int, dim: int, seed: int = 0, chunk: int = 65536) -> torch.Tensor:
    """Random unit rows, float32 [n, dim], made in chunks (a 1M x 512 matrix needs no second copy)."""
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty(n, dim)
    for start in range(0, n, chunk):
        block = out[start:start + chunk]
        block.normal_(generator=generator)
        block.div_(block.norm(dim=1, keepdim=True).clamp_min(1e-12))
    return out


QUERIES = (
    "a dog running on a beach", "two children playing football in a park", "a red car parked in the snow",
    "a man riding a bicycle down a busy street", "a cat sleeping on a sofa", "people sitting at a cafe table",
    "a mountain lake at sunset", "a woman with an umbrella in the rain", "a plate of pasta with tomatoes",
    "a black and white photo of a city skyline",
)


def synthetic_state(identity: str, name: str, features: torch.Tensor, size: int = 60_000, added: float = 1.7e9,
                    names: list[str] | None = None, seed: int = 0):
    """A LibraryState of the given unit rows [N, D] with IDs 1..N, files 000001.jpg.., and sha256 digests drawn at
    random (uniform like real ones: made-up hashes with a shared prefix would make hash lookups scan)."""
    from ...library.state import LibraryState

    n, dim = features.shape
    generator = torch.Generator().manual_seed(seed)
    digests = torch.randint(0, 256, (n, 32), dtype=torch.uint8, generator=generator).numpy().tobytes()
    files = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    return LibraryState.build(identity, name, dim, ids=torch.arange(1, n + 1, dtype=torch.int64), features=features,
                              files=files, sha256=[digests[i * 32:(i + 1) * 32].hex() for i in range(n)],
                              added=torch.full((n,), added, dtype=torch.float64),
                              sizes=torch.full((n,), size, dtype=torch.int64),
                              names=list(files) if names is None else names, next_id=n + 1)


def query_text(index: int) -> str:
    """A distinct, realistic search query for each index (so the text cache never answers)."""
    return f"{QUERIES[index % len(QUERIES)]} number {index}"


LABELS = ("dog", "cat", "car", "bicycle", "tree", "house", "person", "boat", "bird", "flower")


def label_set(index: int, count: int = 10) -> list[str]:
    """A distinct label set of `count` labels for each index (so no classifier cache answers)."""
    return [f"{LABELS[i % len(LABELS)]} {index}-{i}" for i in range(count)]


def open_library(folder: Path, encoder: ClipEncoder, batch_size: int) -> FeatureLibrary:
    """A FeatureLibrary with its gallery and file under `folder` (created empty when new)."""
    folder.mkdir(parents=True, exist_ok=True)
    return FeatureLibrary(folder / "gallery", folder / "features_library.pth", encoder, batch_size=batch_size)


def make_app(folder: Path, encoder: ClipEncoder, batch_size: int) -> App:
    """An App over this encoder and a library under `folder` (label sets stored there too)."""
    return App(encoder, open_library(folder, encoder, batch_size), LabelSetStore(folder / "label_sets.json"))
