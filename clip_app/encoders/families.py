"""Model families behind one `--model` syntax: OpenAI CLIP (`clip`), `open_clip` and Chinese-CLIP (`cn_clip`).

Syntax (documented in docs/models.md):
- `ViT-B/32`, `RN50`, `/path/ViT-B-32.pt`, `clip:ViT-B/32`: OpenAI CLIP, as before (clip_torch.py loads it);
- `open_clip:ARCH/TAG` (e.g. `open_clip:ViT-B-32/laion2b_s34b_b79k`): open_clip's pretrained weights, downloaded
  once into the weights folder by open_clip itself; `open_clip:ARCH@FILE`: a local state dict for ARCH;
- `cn_clip:ARCH` (e.g. `cn_clip:ViT-B-16`): Chinese-CLIP's weights, downloaded by cn_clip; `cn_clip:ARCH@FILE`.
Identity (what a library is stamped with): `FAMILY:ARCH/TAG` for a named model, `sha256:<digest>` for a file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .base import ModelLoadError

log = logging.getLogger(__name__)

FAMILIES = ("clip", "open_clip", "cn_clip")
PACKAGES = {"open_clip": ("open_clip", "open_clip_torch"), "cn_clip": ("cn_clip", "cn_clip")}

#: Zero-shot ImageNet-1k top-1 (%) of OpenAI's models as published in the CLIP paper (Radford et al., 2021).
OPENAI_IMAGENET_TOP1: dict[str, float] = {
    "RN50": 59.6, "RN101": 62.2, "RN50x4": 65.8, "RN50x16": 70.5, "RN50x64": 73.6, "ViT-B/32": 63.2,
    "ViT-B/16": 68.6, "ViT-L/14": 75.3, "ViT-L/14@336px": 76.2,
}

#: Published zero-shot ImageNet-1k top-1 (%) of some open_clip models: open_clip's results table
#: (github.com/mlfoundations/open_clip, docs/openclip_results.csv, column "ImageNet 1k"). Models not listed: no
#: figure checked. Chinese-CLIP publishes no ImageNet figure in its README's model card, so none is given.
PUBLISHED_TOP1: dict[str, float] = {
    "open_clip:ViT-B-32/openai": 63.32,
    "open_clip:ViT-B-32/laion400m_e32": 60.24,
    "open_clip:ViT-B-32/laion2b_e16": 65.65,
    "open_clip:ViT-B-32/laion2b_s34b_b79k": 66.56,
    "open_clip:ViT-B-32/datacomp_xl_s13b_b90k": 69.17,
    "open_clip:ViT-B-32-256/datacomp_s34b_b86k": 72.81,
    "open_clip:ViT-B-16/openai": 68.34,
    "open_clip:ViT-B-16/laion400m_e32": 67.05,
    "open_clip:ViT-B-16/laion2b_s34b_b88k": 70.23,
    "open_clip:ViT-B-16/datacomp_xl_s13b_b90k": 73.49,
    "open_clip:ViT-L-14/openai": 75.54,
    "open_clip:ViT-L-14/laion400m_e32": 72.77,
    "open_clip:ViT-L-14/laion2b_s32b_b82k": 75.25,
    "open_clip:ViT-L-14/datacomp_xl_s13b_b90k": 79.21,
    "open_clip:ViT-L-14-336/openai": 76.56,
    "open_clip:ViT-H-14/laion2b_s32b_b79k": 77.96,
    "open_clip:ViT-g-14/laion2b_s34b_b88k": 78.47,
    "open_clip:ViT-bigG-14/laion2b_s39b_b160k": 80.09,
    "open_clip:xlm-roberta-base-ViT-B-32/laion5b_s13b_b90k": 62.36,
    "open_clip:xlm-roberta-large-ViT-H-14/frozen_laion5b_s13b_b90k": 76.95,
    "open_clip:RN50/openai": 59.82,
    "open_clip:RN101/openai": 62.28,
}


@dataclass(frozen=True)
class ModelSpec:
    """A parsed `--model` value: family, architecture, pretrained tag (or None) and weights file (or None)."""

    family: str
    arch: str
    tag: str | None = None
    file: Path | None = None

    @property
    def text(self) -> str:
        """The canonical spelling, e.g. `open_clip:ViT-B-32/laion2b_s34b_b79k` or `cn_clip:RN50@/m/x.pt`."""
        if self.file is not None:
            return f"{self.family}:{self.arch}@{self.file}"
        return f"{self.family}:{self.arch}" + (f"/{self.tag}" if self.tag else "")


def parse_model_spec(model: str) -> ModelSpec:
    """Split a `--model` value into its family and parts; plain names and paths are OpenAI CLIP."""
    family, sep, rest = model.partition(":")
    if not sep or family not in FAMILIES:
        if sep and re.fullmatch(r"[A-Za-z][\w-]+", family) and not Path(model).expanduser().exists():
            raise ModelLoadError(f"unknown model family {family!r} in {model!r}: use one of "
                                 f"{', '.join(FAMILIES)} (e.g. open_clip:ViT-B-32/laion2b_s34b_b79k), or "
                                 "--model list to see the names")
        return ModelSpec("clip", model)
    if family == "clip":
        arch, at, path = rest.partition("@")
        return ModelSpec("clip", path if at else arch, file=Path(path).expanduser() if at else None)
    arch, at, path = rest.partition("@")
    if at:
        if not arch or not path:
            raise ModelLoadError(f"write a local weights file as {family}:ARCH@FILE; got {model!r}")
        return ModelSpec(family, arch, file=Path(path).expanduser())
    arch, _, tag = arch.partition("/")
    if not arch:
        raise ModelLoadError(f"no architecture in {model!r}: write {family}:ARCH"
                             + ("/PRETRAINED" if family == "open_clip" else ""))
    return ModelSpec(family, arch, tag=tag or None)


def import_family(family: str) -> Any:
    """The family's package, or ModelLoadError naming the pip package to install."""
    module, package = PACKAGES[family]
    try:
        return __import__(module)
    except ImportError as exc:
        raise ModelLoadError(f"the {family} model family needs the {package!r} package: pip install {package} "
                             f"({exc})") from exc


# ---- names ----------------------------------------------------------------------------------------------------
def open_clip_names() -> list[tuple[str, str]]:
    """(architecture, pretrained tag) pairs that open_clip can download."""
    return [tuple(pair) for pair in import_family("open_clip").list_pretrained()]


def cn_clip_names() -> list[str]:
    """Chinese-CLIP's model names (ViT-B-16, ViT-L-14, ViT-L-14-336, ViT-H-14, RN50)."""
    import_family("cn_clip")
    from cn_clip.clip import available_models

    return list(available_models())


def validate_spec(spec: ModelSpec) -> None:
    """ModelLoadError when the family does not know the architecture or tag; the message lists what exists."""
    if spec.family == "open_clip":
        open_clip = import_family("open_clip")
        if spec.arch not in open_clip.list_models():
            close = [m for m in open_clip.list_models() if m.lower().startswith(spec.arch.lower()[:5])]
            raise ModelLoadError(f"unknown open_clip architecture {spec.arch!r}; similar: {', '.join(close[:12])} "
                                 "(--model list shows every name)")
        if spec.file is None:
            tags = open_clip.list_pretrained_tags_by_model(spec.arch)
            if spec.tag is None or spec.tag not in tags:
                what = "no pretrained tag" if spec.tag is None else f"unknown pretrained tag {spec.tag!r}"
                raise ModelLoadError(f"{what} for open_clip:{spec.arch}; use one of "
                                     f"{', '.join(tags) or '(none: pass a weights file, ARCH@FILE)'}")
    elif spec.family == "cn_clip":
        names = cn_clip_names()
        if spec.arch not in names:
            raise ModelLoadError(f"unknown Chinese-CLIP model {spec.arch!r}; use one of {', '.join(names)}")
        if spec.tag:
            raise ModelLoadError(f"Chinese-CLIP models have no pretrained tag: write cn_clip:{spec.arch}")
    if spec.file is not None and not spec.file.is_file():
        raise ModelLoadError(f"{spec.family} weights file not found: {spec.file}")


def family_identity(spec: ModelSpec) -> tuple[str, str]:
    """(identity, readable name) of an open_clip or cn_clip spec, without loading weights."""
    from .clip_torch import file_sha256

    validate_spec(spec)
    if spec.file is not None:
        return f"sha256:{file_sha256(spec.file)}", f"{spec.family}:{spec.arch}@{spec.file.name}"
    return spec.text, spec.text


# ---- loading --------------------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A family's model with its preprocessing and tokenizer (`tokenize(texts, truncate=True) -> [N, L]`)."""

    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenize: Callable[..., torch.Tensor]
    input_resolution: int


def load_family_model(spec: ModelSpec, device: str, download_root: str | os.PathLike[str] | None) -> LoadedModel:
    """Build an open_clip or Chinese-CLIP model with its weights (a tag/name downloads once into download_root)."""
    validate_spec(spec)
    check_memory(spec, device)
    try:
        if spec.family == "open_clip":
            return _load_open_clip(spec, device, download_root)
        return _load_cn_clip(spec, device, download_root)
    except ModelLoadError:
        raise
    except Exception as exc:  # downloads, corrupt files, state dicts of another architecture
        raise ModelLoadError(load_failure_message(spec, download_root, exc)) from exc


def load_failure_message(spec: ModelSpec, download_root: Any, exc: Exception) -> str:
    """What went wrong and the local-file way out."""
    if spec.file is not None:
        return (f"could not load {spec.file} as {spec.family}:{spec.arch} weights: {type(exc).__name__}: "
                f"{str(exc)[:400]}. The file must hold the state dict of that architecture.")
    where = download_root or "~/.cache/clip"
    return (f"could not load {spec.text}: the weights could not be found in {where} or downloaded "
            f"({type(exc).__name__}: {str(exc)[:300]}). On an offline machine, pass a local weights file: "
            f"--model {spec.family}:{spec.arch}@/path/to/weights.bin (or CLIP_APP_MODEL=...).")


def _load_open_clip(spec: ModelSpec, device: str, download_root: Any) -> LoadedModel:
    open_clip = import_family("open_clip")
    cache = str(download_root) if download_root else None
    precision = "fp16" if str(device).startswith("cuda") else "fp32"
    model, _, preprocess = open_clip.create_model_and_transforms(
        spec.arch, pretrained=str(spec.file) if spec.file is not None else spec.tag, device=device,
        precision=precision, cache_dir=cache, require_pretrained=True)
    tokenizer = open_clip.get_tokenizer(spec.arch, cache_dir=cache)
    size = open_clip.get_model_preprocess_cfg(model).get("size", 224)
    resolution = int(size if isinstance(size, int) else max(size))
    return LoadedModel(model.eval(), preprocess, lambda texts, truncate=True: tokenizer(list(texts)), resolution)


def _load_cn_clip(spec: ModelSpec, device: str, download_root: Any) -> LoadedModel:
    import_family("cn_clip")
    from cn_clip.clip import load_from_name, tokenize
    from cn_clip.clip.utils import _MODEL_INFO

    info = _MODEL_INFO[spec.arch]
    vision, text = info["struct"].split("@")
    with contextlib.redirect_stdout(io.StringIO()):  # cn_clip prints its configs; keep our stdout (JSON) clean
        if spec.file is not None:
            model, preprocess = load_from_name(str(spec.file), device=device, vision_model_name=vision,
                                               text_model_name=text, input_resolution=info["input_resolution"])
        else:
            model, preprocess = load_from_name(spec.arch, device=device,
                                               download_root=str(download_root) if download_root else None)
    return LoadedModel(model.eval(), preprocess, lambda texts, truncate=True: tokenize(list(texts)),
                       int(info["input_resolution"]))


# ---- memory ---------------------------------------------------------------------------------------------------
def parameter_count(spec: ModelSpec) -> int:
    """Parameters of the spec's architecture, counted on PyTorch's meta device (no memory, no weights)."""
    with torch.device("meta"), contextlib.redirect_stdout(io.StringIO()), _quiet_logging():
        if spec.family == "open_clip":
            model = import_family("open_clip").create_model(spec.arch, pretrained=None, load_weights=False,
                                                              pretrained_text=False, device="meta")
        else:
            from cn_clip.clip.utils import _MODEL_INFO, create_model

            model = create_model(_MODEL_INFO[spec.arch]["struct"])
    return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """Silence the families' own warnings (open_clip: 'No pretrained weights loaded') while counting parameters."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def available_memory(device: str) -> int | None:
    """Free bytes on the device (CUDA: mem_get_info; CPU: MemAvailable), or None when unknown."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(spec: ModelSpec, device: str) -> None:
    """ModelLoadError when the model's weights (fp16 on CUDA, fp32 else; x2 while loading) exceed free memory."""
    try:
        params = parameter_count(spec)
    except Exception as exc:  # an architecture the meta device cannot build: the load itself will tell
        log.debug("could not count the parameters of %s: %s", spec.text, exc)
        return
    need = params * (2 if str(device).startswith("cuda") else 4) * 2
    free = available_memory(device)
    if free is not None and need > free:
        raise ModelLoadError(f"{spec.text} needs about {need / 2**30:.1f} GiB of memory on {device} to load "
                             f"({params / 1e6:.0f}M parameters) but only {free / 2**30:.1f} GiB is free; choose a "
                             "smaller model or another device (--device)")


# ---- listing --------------------------------------------------------------------------------------------------
def model_listing() -> str:
    """Every model name per family, with its published ImageNet top-1 where the family publishes one."""
    import clip

    lines = ["clip (OpenAI; --model NAME or a checkpoint file):"]
    lines += [f"  {name:<40} {OPENAI_IMAGENET_TOP1.get(name, ''):>5}" for name in clip.available_models()]
    for family, lister in (("open_clip", open_clip_names), ("cn_clip", cn_clip_names)):
        try:
            names = lister()
        except ModelLoadError as exc:
            lines += [f"{family}: not installed ({exc})"]
            continue
        lines += [f"{family} (--model {family}:" + ("ARCH/TAG" if family == "open_clip" else "ARCH")
                  + f", or {family}:ARCH@FILE):"]
        for name in names:
            text = f"{family}:{name[0]}/{name[1]}" if isinstance(name, tuple) else f"{family}:{name}"
            top1 = PUBLISHED_TOP1.get(text)
            lines.append(f"  {text:<60} {top1 if top1 is not None else '':>5}")
    lines.append("ImageNet top-1 (%) as published: CLIP paper (OpenAI), open_clip's results table (open_clip); "
                 "blank where the family publishes none.")
    return "\n".join(lines)
