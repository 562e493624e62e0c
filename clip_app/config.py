"""Settings: every default of clip-app in one place, overridable by CLIP_APP_* variables and flags."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from .search import ConfidenceRule

DEFAULT_MODEL = "ViT-B/32"

#: environment variable -> Settings field
ENV_VARS: dict[str, str] = {
    "CLIP_APP_MODEL": "model",
    "CLIP_APP_DEVICE": "device",
    "CLIP_APP_GALLERY": "gallery_dir",
    "CLIP_APP_LIBRARY": "library_file",
    "CLIP_APP_MODEL_DIR": "model_dir",
    "CLIP_APP_BACKEND": "backend",
    "CLIP_APP_PRECISION": "precision",
    "CLIP_APP_ONNX_THREADS": "onnx_threads",
    "CLIP_APP_TEXT_MODEL": "text_model",
    "CLIP_APP_TAG_THRESHOLD": "tag_threshold",
    "CLIP_APP_CONFIDENCE_MIN_Z": "confidence_min_z",
    "CLIP_APP_CONFIDENCE_MIN_MARGIN": "confidence_min_margin",
    "CLIP_APP_CONFIDENCE_MIN_GALLERY": "confidence_min_gallery",
    "CLIP_APP_MAX_FILE_SIZE": "max_file_size",
    "CLIP_APP_MAX_REQUEST_SIZE": "max_request_size",
    "CLIP_APP_MAX_LABELS": "max_labels",
    "CLIP_APP_MAX_PROMPTS": "max_prompts",
}

BACKENDS = ("auto", "torch", "onnx")
PRECISIONS = ("fp32", "int8")

PATH_FIELDS = frozenset({"gallery_dir", "library_file", "model_dir"})
DATABASE_URL_SCHEMES = ("postgresql://", "postgres://")
#: numeric fields: name -> (type, low, high), checked when read from the environment or a flag
NUMBER_FIELDS: dict[str, tuple[type, float, float]] = {
    "tag_threshold": (float, -1.0, 1.0),
    "confidence_min_z": (float, 0.0, 1000.0),
    "confidence_min_margin": (float, -2.0, 2.0),
    "confidence_min_gallery": (int, 1, 10**12),
}
#: the flag of each numeric field (also the dest of the argparse option)
NUMBER_FLAGS = {name: "--" + name.replace("_", "-") for name in NUMBER_FIELDS}


def parse_number(name: str, raw: object, source: str) -> float | int:
    """A numeric setting from text: ValueError naming the variable or flag when it is not a number in range."""
    kind, low, high = NUMBER_FIELDS[name]
    try:
        value = kind(float(str(raw).strip())) if kind is int else float(str(raw).strip())
    except ValueError:
        raise ValueError(f"{source} must be a number, got {raw!r}") from None
    if value != value or not low <= value <= high:  # NaN or out of range
        raise ValueError(f"{source} must be between {low:g} and {high:g}, got {raw!r}")
    return value


#: fields given as sizes ('20MB', '500KB', bytes) and as whole numbers
SIZE_FIELDS = frozenset({"max_file_size", "max_request_size"})
COUNT_FIELDS = frozenset({"max_labels", "max_prompts"})

DEFAULT_MAX_FILE_SIZE = 20 * 1024 * 1024  # one uploaded or indexed image file
DEFAULT_MAX_REQUEST_SIZE = 1024 * 1024  # one API request body other than a file upload (JSON: labels, queries)
DEFAULT_MAX_LABELS = 1000  # labels in one classify request
DEFAULT_MAX_PROMPTS = 8000  # labels x templates of one classifier (100 labels with the 80-template ensemble)


def library_location(value: str) -> Path | str:
    """--library / CLIP_APP_LIBRARY: a file path, or a postgresql:// URL kept as it is (a Path would fold its //)."""
    value = value.strip()
    return value if value.lower().startswith(DATABASE_URL_SCHEMES) else Path(value).expanduser()


def default_model_dir() -> Path:
    """Where downloaded CLIP weights go: the clip package's own default (~/.cache/clip)."""
    return Path.home() / ".cache" / "clip"


@dataclass(frozen=True)
class Settings:
    """Every run-time choice of the app, the index manager and the benchmarks."""

    model: str = DEFAULT_MODEL
    device: str = "auto"
    gallery_dir: Path = Path("gallery")
    library_file: Path | str = Path("features_library.pth")  # or a postgresql:// URL (library/pg_store.py)
    model_dir: Path = default_model_dir()
    text_model: str | None = None  #: a multilingual text tower (hub name or local folder); None: CLIP's own only
    text_routing: str = "auto"     #: 'auto' (plain English to CLIP's text tower) or 'multilingual' (every text)
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    max_request_size: int = DEFAULT_MAX_REQUEST_SIZE
    max_labels: int = DEFAULT_MAX_LABELS
    max_prompts: int = DEFAULT_MAX_PROMPTS
    #: cosine from which an image gets a label when the library is tagged (a set may override it per label)
    tag_threshold: float = 0.25
    #: search confidence (see search.ConfidenceRule and docs/tags-and-confidence.md)
    confidence_min_z: float = 2.0
    confidence_min_margin: float = 0.01
    confidence_min_gallery: int = 10
    backend: str = "auto"  #: auto (ONNX Runtime on a CPU when installed, PyTorch on CUDA), torch or onnx
    precision: str = "fp32"  #: fp32, or int8 (ONNX Runtime dynamic quantisation; never the default)
    onnx_threads: int | None = None  #: ONNX Runtime intra-op threads (None: the physical cores)

    def confidence_rule(self) -> "ConfidenceRule":
        """The search confidence rule of these settings."""
        from .search import ConfidenceRule

        return ConfidenceRule(self.confidence_min_z, self.confidence_min_margin, int(self.confidence_min_gallery))

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}: use one of {', '.join(BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")
        if self.onnx_threads is not None and int(self.onnx_threads) < 1:
            raise ValueError("the ONNX Runtime threads must be at least 1")

    def encoder_options(self) -> dict[str, object]:
        """Keyword arguments of ClipEncoder(model, **options): device, weights folder, backend, precision, threads."""
        return {"device": self.device, "download_root": self.model_dir, "backend": self.backend,
                "precision": self.precision, "threads": self.onnx_threads}

    def resolved_device(self) -> str:
        """The torch device to use: 'auto' means CUDA when available, else CPU."""
        return resolve_device(self.device)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Defaults overridden by the CLIP_APP_* environment variables that are set and non-empty."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for var, name in ENV_VARS.items():
            raw = env.get(var, "").strip()
            if raw:
                if name in NUMBER_FIELDS:
                    values[name] = parse_number(name, raw, var)
                else:
                    values[name] = _convert(name, raw, var)
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> "Settings":
        """Environment first, then any flag given on the command line (flags win)."""
        base = cls.from_env(environ)
        changes: dict[str, object] = {}
        for name in ("model", "device", "text_model", "text_routing", "backend", "precision", "onnx_threads"):
            value = getattr(args, name, None)
            if value:
                changes[name] = value
        for flag, name in (("gallery", "gallery_dir"), ("library", "library_file"), ("model_dir", "model_dir")):
            value = getattr(args, flag, None)
            if value:
                changes[name] = _convert(name, value, "--" + flag.replace("_", "-"))
        for name, flag in NUMBER_FLAGS.items():
            value = getattr(args, name, None)
            if value is not None:
                changes[name] = parse_number(name, value, flag)
        for name in sorted(SIZE_FIELDS | COUNT_FIELDS):
            value = getattr(args, name, None)
            if value not in (None, ""):
                changes[name] = _convert(name, value, "--" + name.replace("_", "-"))
        return replace(base, **changes)


def _convert(name: str, raw: object, source: str) -> object:
    """A setting's value from its text (ValueError naming the flag or variable when it is not valid)."""
    if name in ("backend", "precision"):
        return str(raw).strip().lower()
    if name == "onnx_threads":
        try:
            return int(str(raw).strip())
        except ValueError:
            raise ValueError(f"{source}={raw!r} is not a whole number") from None
    if name == "library_file":
        return library_location(str(raw))
    if name in PATH_FIELDS:
        return Path(str(raw)).expanduser()
    if name in SIZE_FIELDS:
        return parse_size(raw, source)
    if name in COUNT_FIELDS:
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise ValueError(f"{source} must be a whole number, got {raw!r}") from None
        if value < 1:
            raise ValueError(f"{source} must be at least 1, got {raw!r}")
        return value
    return raw


def parse_size(text: object, source: str = "the size") -> int:
    """Bytes from '20MB', '500kb', '1GB' or a plain number of bytes (units of 1024, as Gradio counts them)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        raw = str(text).strip().upper().replace(" ", "")
        unit = next((u for u in ("TB", "GB", "MB", "KB", "B") if raw.endswith(u)), "")
        factor = {"TB": 1024 ** 4, "GB": 1024 ** 3, "MB": 1024 ** 2, "KB": 1024}.get(unit, 1)
        try:
            value = int(float(raw[: len(raw) - len(unit)]) * factor)
        except (ValueError, OverflowError):
            raise ValueError(f"not a file size: {text!r} (use e.g. 20MB, 500KB or a number of bytes)") from None
    if value <= 0:
        raise ValueError(f"the file size limit must be positive, got {text!r}")
    return value


def resolve_device(device: str) -> str:
    """Map 'auto' to 'cuda' when a GPU is visible, else 'cpu'; check an explicit CUDA request."""
    import torch

    device = (device or "auto").strip().lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but no CUDA GPU is available; use --device cpu")
    return device


class ModelArgument(argparse.Action):
    """`--model M` (stored, or appended with append=True); `--model list` prints every model name and exits."""

    def __init__(self, *args: object, append: bool = False, **kwargs: object) -> None:
        self.append = append
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        if values == "list":
            from .encoders.families import model_listing

            print(model_listing())
            parser.exit(0)
        if self.append:
            setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), values])
        else:
            setattr(namespace, self.dest, values)


MODEL_HELP = (f"model: an OpenAI CLIP name (e.g. {DEFAULT_MODEL}) or checkpoint file, open_clip:ARCH/TAG, "
              "cn_clip:ARCH, FAMILY:ARCH@FILE for local weights; 'list' prints every name [env CLIP_APP_MODEL]")


def add_settings_arguments(parser: argparse.ArgumentParser, *, library: bool = True,
                           many_models: bool = False) -> None:
    """The shared flags: --model, --device, --gallery, --library, --model-dir, --backend, --precision,
    --onnx-threads (defaults come from Settings).
    library=False leaves out --gallery and --library (the benchmarks); many_models makes --model repeatable."""
    parser.add_argument("--model", action=ModelArgument, append=many_models, metavar="NAME_OR_PATH",
                        help=MODEL_HELP + ("; repeat for several" if many_models else ""))
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N [env CLIP_APP_DEVICE; default auto]")
    if library:
        parser.add_argument("--gallery", help="gallery folder [env CLIP_APP_GALLERY; default gallery/]")
        parser.add_argument("--library",
                            help="feature library file, or postgresql://USER@HOST:PORT/DB[?table=NAME] for a "
                            "PostgreSQL + pgvector store [env CLIP_APP_LIBRARY; default features_library.pth]")
    parser.add_argument("--model-dir", dest="model_dir",
                        help="where model weights are downloaded (and ONNX exports cached) [env CLIP_APP_MODEL_DIR; "
                        "default ~/.cache/clip]")
    parser.add_argument("--text-model", dest="text_model",
                        help="a multilingual text tower aligned to --model: a hub name (e.g. "
                        "clip-ViT-B-32-multilingual-v1, M-CLIP/XLM-Roberta-Large-Vit-B-32) or a local folder "
                        "[env CLIP_APP_TEXT_MODEL; default none: English through CLIP's own text tower]")
    parser.add_argument("--text-routing", dest="text_routing", choices=("auto", "multilingual"),
                        help="with --text-model: auto sends plain English to CLIP's own text tower and any other "
                        "text to the multilingual one; multilingual sends every text there [default auto]")
    if library:  # the app and the index manager read image files; the benchmarks have their own data
        parser.add_argument("--max-file-size", dest="max_file_size", default=None,
                            help="largest image file accepted (uploads and `index add`), e.g. 20MB or 500KB "
                            "[env CLIP_APP_MAX_FILE_SIZE; default 20MB]")
        parser.add_argument("--tag-threshold", dest="tag_threshold", metavar="COS",
                            help="cosine from which an image gets a label when the library is tagged, unless the "
                            "label set says otherwise [env CLIP_APP_TAG_THRESHOLD; default 0.25]")
        parser.add_argument("--confidence-min-z", dest="confidence_min_z", metavar="Z",
                            help="a confident search's best score stands at least Z standard deviations above the "
                            "query's scores over the gallery [env CLIP_APP_CONFIDENCE_MIN_Z; default 2.0]")
        parser.add_argument("--confidence-min-margin", dest="confidence_min_margin", metavar="COS",
                            help="a confident text search's best image matches the query by at least this much "
                            "more cosine than the neutral prompts [env CLIP_APP_CONFIDENCE_MIN_MARGIN; default 0.01]")
        parser.add_argument("--confidence-min-gallery", dest="confidence_min_gallery", metavar="N",
                            help="below N images only the margin decides confidence "
                            "[env CLIP_APP_CONFIDENCE_MIN_GALLERY; default 10]")
    add_backend_arguments(parser)


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """--backend, --precision, --onnx-threads (for commands that have their own --model and --device flags)."""
    parser.add_argument("--backend", choices=BACKENDS,
                        help="what runs the model: auto (ONNX Runtime on a CPU when installed, PyTorch on a GPU), "
                        "torch or onnx [env CLIP_APP_BACKEND; default auto]")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="fp32, or int8 (ONNX Runtime dynamic quantisation: faster, may cost accuracy; measure it "
                        "with the benchmarks) [env CLIP_APP_PRECISION; default fp32]")
    parser.add_argument("--onnx-threads", dest="onnx_threads", type=int,
                        help="ONNX Runtime threads per forward pass [env CLIP_APP_ONNX_THREADS; default: the "
                        "physical cores]")


def add_request_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """The per-request caps of the app: --max-request-size, --max-labels, --max-prompts."""
    parser.add_argument("--max-request-size", dest="max_request_size", default=None,
                        help="largest API request body other than a file upload, e.g. 1MB "
                        "[env CLIP_APP_MAX_REQUEST_SIZE; default 1MB]")
    parser.add_argument("--max-labels", dest="max_labels", default=None,
                        help="most labels in one classify request [env CLIP_APP_MAX_LABELS; default 1000]")
    parser.add_argument("--max-prompts", dest="max_prompts", default=None,
                        help="most prompts (labels x templates) in one classifier [env CLIP_APP_MAX_PROMPTS; "
                        "default 8000: 100 labels with the 80-template ensemble]")
