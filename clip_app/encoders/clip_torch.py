"""ClipEncoder (PyTorch): load an OpenAI CLIP model by name or checkpoint path; encode images and texts to unit rows."""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from ..config import DEFAULT_MODEL, default_model_dir, resolve_device
from ..files import sha256_file as file_sha256
from .base import ModelLoadError, l2_normalize

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
TEXT_BATCH_SIZE = 256
TEXT_CACHE_SIZE = 20_000  # prompt strings kept (about 40 MB of ViT-B/32 features); classifiers are cached too
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def official_checksums() -> dict[str, str]:
    """sha256 -> official model name, from the download URLs of the clip package (they embed the hash)."""
    import clip.clip as clip_module

    return {url.rstrip("/").split("/")[-2]: name for name, url in clip_module._MODELS.items()}


def model_identity(model: str) -> tuple[str, str]:
    """(identity, readable name) of a model name or checkpoint path, without loading any weights: a CLIP model name
    is both; a checkpoint file is the official model its sha256 belongs to, else ('sha256:<digest>', its file name).
    ModelLoadError when it is neither a known name nor an existing file."""
    import clip

    from .families import family_identity, parse_model_spec

    spec = parse_model_spec(model)
    if spec.family != "clip":
        return family_identity(spec)
    model = str(spec.file) if spec.file is not None else spec.arch
    path = Path(model).expanduser()
    if path.is_file():
        digest = file_sha256(path)
        official = official_checksums().get(digest)
        return official or f"sha256:{digest}", official or path.name
    if model not in clip.available_models():
        if path.suffix.lower() in CHECKPOINT_SUFFIXES or model.startswith(("/", ".", "~")):
            raise ModelLoadError(f"CLIP checkpoint file not found: {model}")
        raise ModelLoadError(
            f"unknown CLIP model {model!r}: use one of {', '.join(clip.available_models())} "
            "or the path of a local checkpoint file")
    return model, model


class ClipEncoder:
    """A loaded CLIP model with batched, normalised, cached encoders. Outputs are float32 CPU tensors."""

    loaded = True  # Encoder.loaded: the weights are in memory from the start

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "auto",
                 download_root: str | os.PathLike[str] | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 text_cache_size: int = TEXT_CACHE_SIZE, backend: str | None = None, precision: str = "fp32",
                 threads: int | None = None) -> None:
        """backend: 'auto' (ONNX Runtime on a CPU when installed, else PyTorch), 'torch' or 'onnx'; None reads
        CLIP_APP_BACKEND (default auto). precision: 'fp32' or 'int8' (ONNX Runtime only). threads: ONNX Runtime
        intra-op threads (default CLIP_APP_ONNX_THREADS, else the physical cores)."""
        import clip

        from .families import load_family_model, parse_model_spec
        from .onnx_runtime import resolve_backend

        if precision not in ("fp32", "int8"):
            raise ValueError(f"unknown precision {precision!r}: use fp32 or int8")

        self.device = resolve_device(device)
        self.model_dir = str(download_root) if download_root else None
        spec = parse_model_spec(model)
        if spec.family != "clip":  # open_clip, Chinese-CLIP: their own loader, tokenizer and preprocessing
            identity, name = model_identity(model)
            self.source = model
            loaded = load_family_model(spec, self.device, download_root)
            self._setup(loaded.model, loaded.preprocess, name=name, identity=identity, batch_size=batch_size,
                        text_cache_size=text_cache_size, tokenizer=loaded.tokenize,
                        input_resolution=loaded.input_resolution, family=spec.family)
            wanted = backend if backend is not None else os.environ.get("CLIP_APP_BACKEND", "").strip() or "auto"
            if resolve_backend(wanted, self.device) == "onnx":
                if spec.family == "open_clip":  # exported and verified like OpenAI CLIP; PyTorch when it fails
                    weights_dir = Path(download_root).expanduser() if download_root else default_model_dir()
                    self._start_onnx(weights_dir, precision, threads)
                elif wanted.strip().lower() == "onnx":
                    log.warning("the ONNX Runtime backend exports OpenAI CLIP and open_clip models: %s runs on "
                                "PyTorch", name)
            log.info("loaded %s on %s, backend %s (dim %d, input %d px)", name, self.device, self.backend_name,
                     self.dim, self.input_resolution)
            return
        model = str(spec.file) if spec.file is not None else spec.arch
        path = Path(model).expanduser()
        is_file = path.is_file()
        identity, name = model_identity(model)  # ModelLoadError for an unknown name or a missing file
        #: the model as it is given on a command line (`--model`), and --model-dir: for the advice in messages
        self.source = str(path.absolute()) if is_file else model
        self._loader = (model, is_file, download_root)
        wanted = backend if backend is not None else os.environ.get("CLIP_APP_BACKEND", "").strip() or "auto"
        chosen = resolve_backend(wanted, self.device)
        weights_dir = Path(download_root).expanduser() if download_root else default_model_dir()
        towers = None
        if chosen == "onnx":  # a cached export needs no PyTorch weights: they load only if something asks for them
            from .onnx_runtime import open_cached

            towers = open_cached(identity, weights_dir, precision, threads)
        if towers is not None:
            info = towers.exported.manifest["model"]
            self._setup(None, clip.clip._transform(int(info["input_resolution"])), name=name, identity=identity,
                        batch_size=batch_size, text_cache_size=text_cache_size, info=info)
            self._onnx, self.backend, self.precision = towers, "onnx", precision
        else:
            self._setup(self._load_clip(), None, name=name, identity=identity, batch_size=batch_size,
                        text_cache_size=text_cache_size)
            if chosen == "onnx":
                self._start_onnx(weights_dir, precision, threads)
            elif precision != "fp32":
                log.warning("--precision %s needs the ONNX Runtime backend: running PyTorch %s", precision,
                            "fp16" if self.dtype == torch.float16 else "fp32")
        log.info("loaded CLIP %s on %s, backend %s (dim %d, input %d px)", name, self.device, self.backend_name,
                 self.dim, self.input_resolution)

    def _load_clip(self) -> tuple[torch.nn.Module, Callable[[Image.Image], torch.Tensor]]:
        """(model, preprocess) through clip.load (ModelLoadError with the way out when it fails)."""
        import clip

        model, is_file, download_root = self._loader
        try:
            return clip.load(str(Path(model).expanduser()) if is_file else model, device=self.device, jit=False,
                             download_root=str(download_root) if download_root else None)
        except Exception as exc:  # network errors, corrupt files, wrong architectures
            raise ModelLoadError(self._load_failure_message(model, is_file, download_root, exc)) from exc

    @property
    def model(self) -> torch.nn.Module:
        """The PyTorch model (loaded on first use when ONNX Runtime started from a cached export)."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    log.info("loading the PyTorch weights of %s", self.name)
                    self._model = self._load_clip()[0].eval()
        return self._model

    @model.setter
    def model(self, value: torch.nn.Module) -> None:
        self._model = value

    @classmethod
    def from_model(cls, model: torch.nn.Module, preprocess: Callable[[Image.Image], torch.Tensor], *, name: str,
                   identity: str | None = None, device: str = "cpu", batch_size: int = DEFAULT_BATCH_SIZE,
                   tokenizer: Callable[..., torch.Tensor] | None = None,
                   text_cache_size: int = TEXT_CACHE_SIZE) -> "ClipEncoder":
        """Wrap an already built model with CLIP's interface (encode_image, encode_text)."""
        self = cls.__new__(cls)
        self.device = device
        self.source, self.model_dir = name, None  # Encoder.source: a built model is known by its name
        self._setup(model.to(device), preprocess, name=name, identity=identity or name, batch_size=batch_size,
                    text_cache_size=text_cache_size, tokenizer=tokenizer)
        return self

    def _setup(self, model: Any, preprocess: Callable[[Image.Image], torch.Tensor] | None, *, name: str,
               identity: str, batch_size: int, text_cache_size: int,
               tokenizer: Callable[..., torch.Tensor] | None = None, input_resolution: int | None = None,
               family: str = "clip", info: dict | None = None) -> None:
        """model: a module, a (module, preprocess) pair from clip.load, or None with `info` (input_resolution,
        dim, causal: from an ONNX export's manifest) when the PyTorch weights are not loaded."""
        import clip

        if isinstance(model, tuple):
            model, preprocess = model
        self._model = model.eval() if model is not None else None
        self.preprocess = preprocess
        self.name = name
        self.identity = identity
        self.family = family  #: clip, open_clip or cn_clip: picks the family's own prompts (prompts.family_prompts)
        self.batch_size = max(1, int(batch_size))
        self._tokenize = tokenizer or clip.tokenize
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._text_cache_size = text_cache_size
        self._lock = threading.Lock()
        self.cache_hits = 0
        self.cache_misses = 0
        visual = getattr(model, "visual", None)
        resolution = info["input_resolution"] if info else input_resolution
        self.input_resolution = int(resolution or getattr(visual, "input_resolution", 224))
        #: encoding paths decode JPEGs at a reduced scale down to this shorter side (images.decode_image min_side):
        #: twice the input size keeps the preprocessing's own bicubic downscale, so features barely change
        self.decode_min_side = 2 * self.input_resolution
        first = next(iter(model.parameters()), None) if model is not None else None
        self.dtype = getattr(model, "dtype", None) or (first.dtype if first is not None else torch.float32)
        #: 'torch' or 'onnx' (what runs the towers); the identity never depends on it
        self.backend = "torch"
        self.precision = "fp16" if self.dtype == torch.float16 else "fp32"
        self._onnx: Any = None
        self._causal = bool(info["causal"]) if info else has_causal_text_tower(model)
        if info:
            self.dim = int(info["dim"])
            return
        with torch.inference_mode():
            probe = self._forward_text(self._tokenize([""], truncate=True))
        self.dim = int(probe.shape[-1])

    def _start_onnx(self, model_dir: Path, precision: str, threads: int | None) -> None:
        """Run both towers on ONNX Runtime (exported once and cached under model_dir), or stay on PyTorch."""
        from .onnx_runtime import start_onnx

        towers = start_onnx(self.model, self.identity, model_dir, precision, self.preprocess, self._tokenize,
                            self.input_resolution, threads)
        if towers is not None:
            self._onnx, self.backend, self.precision = towers, "onnx", precision

    @property
    def backend_name(self) -> str:
        """The backend in words, e.g. 'onnx (ONNX Runtime fp32, 2 threads)' or 'torch (PyTorch fp32)'."""
        if self._onnx is not None:
            return f"onnx (ONNX Runtime {self.precision}, {self._onnx.threads} threads)"
        return f"torch (PyTorch {self.precision})"

    @staticmethod
    def _load_failure_message(model: str, is_file: bool, download_root: Any, exc: Exception) -> str:
        if is_file:
            return (f"could not load the CLIP checkpoint {model}: {exc}. The file must be an OpenAI CLIP "
                    "checkpoint (a TorchScript archive or a state dict).")
        where = download_root or "~/.cache/clip"
        return (f"could not load CLIP model {model!r}: the weights are not in {where} and could not be downloaded "
                f"({type(exc).__name__}: {exc}). On an offline machine, pass a local checkpoint: "
                f"--model /path/to/{model.replace('/', '-')}.pt (or CLIP_APP_MODEL=/path/to/file.pt), or put the "
                "official file in the folder named by --model-dir / CLIP_APP_MODEL_DIR.")

    # ---- images -------------------------------------------------------------------------------------------
    def encode_images(self, images: Sequence[Image.Image], batch_size: int | None = None) -> torch.Tensor:
        """PIL images -> float32 unit rows [N, D], encoded in batches."""
        size = batch_size or self.batch_size
        chunks = [self.encode_pixels(torch.stack([self.preprocess(img) for img in images[i:i + size]]))
                  for i in range(0, len(images), size)]
        return torch.cat(chunks) if chunks else torch.empty(0, self.dim)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels [N, 3, H, W] -> float32 unit rows [N, D] (one forward pass)."""
        if self._onnx is not None:
            return l2_normalize(self._onnx.encode_pixels(pixels))
        with torch.inference_mode():
            out = self.model.encode_image(pixels.to(self.device, dtype=self.dtype, non_blocking=True))
        return l2_normalize(out).cpu()

    # ---- texts --------------------------------------------------------------------------------------------
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> float32 unit rows [N, D]; long texts are truncated; each distinct text is encoded once."""
        texts = list(texts)
        with self._lock:
            known = {t: self._text_cache[t] for t in texts if t in self._text_cache}
            missing = [t for t in dict.fromkeys(texts) if t not in known]
            self.cache_hits += len(texts) - len(missing)
            self.cache_misses += len(missing)
        fresh: dict[str, torch.Tensor] = dict(known)
        if missing:
            tokens = self._tokenize(missing, truncate=True)
            # shortest first, so each batch is trimmed to a similar length (see encode_text_trimmed)
            order = torch.argsort(tokens.argmax(dim=-1), stable=True).tolist()
            for i in range(0, len(order), TEXT_BATCH_SIZE):
                rows_of = order[i:i + TEXT_BATCH_SIZE]
                with torch.inference_mode():
                    rows = l2_normalize(self._forward_text(tokens[rows_of])).cpu()
                fresh.update(zip((missing[j] for j in rows_of), rows))
        with self._lock:
            for text, row in fresh.items():
                self._text_cache[text] = row
                self._text_cache.move_to_end(text)
            while len(self._text_cache) > self._text_cache_size:
                self._text_cache.popitem(last=False)
        return torch.stack([fresh[t] for t in texts]) if texts else torch.empty(0, self.dim)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> token IDs [N, L] of this model's own tokenizer (truncated to its context)."""
        return self._tokenize(list(texts), truncate=True)

    def encode_tokens(self, tokens: torch.Tensor, trim: bool = True) -> torch.Tensor:
        """Tokens [N, L] -> unnormalised float32 features [N, D]: one forward pass through the active backend, no
        cache; trim=False runs the whole context even where end-of-text trimming would apply."""
        with torch.inference_mode():
            if trim:
                return self._forward_text(tokens).float()
            if self._onnx is not None:
                return self._onnx.encode_tokens(tokens)
            return self.model.encode_text(tokens.to(self.device)).float()

    def _forward_text(self, tokens: torch.Tensor) -> torch.Tensor:
        if self._onnx is not None:
            return self._onnx.encode_tokens(trim_tokens(tokens) if self._causal else tokens)
        tokens = tokens.to(self.device)
        if self._causal:
            return encode_text_trimmed(self.model, tokens)
        return self.model.encode_text(tokens)

    def __repr__(self) -> str:
        return (f"ClipEncoder({self.name!r}, device={self.device!r}, backend={getattr(self, 'backend', '?')!r}, "
                f"dim={getattr(self, 'dim', '?')})")


def has_causal_text_tower(model: torch.nn.Module) -> bool:
    """True for OpenAI CLIP's text tower: a causal-masked transformer read at the end-of-text token."""
    blocks = getattr(getattr(model, "transformer", None), "resblocks", None)
    if blocks is None or not len(blocks) or not all(hasattr(model, a) for a in (
            "token_embedding", "positional_embedding", "ln_final", "text_projection")):
        return False
    mask = getattr(blocks[0], "attn_mask", None)
    return isinstance(mask, torch.Tensor) and mask.dim() == 2 and bool(torch.isinf(mask.float()).triu(1).any())


def encode_text_trimmed(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's encode_text over the first L positions only, L = the latest end-of-text position + 1: [N, 77] -> [N, D].

    Exact: the text transformer is causal and the feature is read at the end-of-text token (the largest token
    ID), so the padding after it never reaches the feature. A 10-token prompt costs about 1/8 of the full 77.
    """
    return encode_text_prefix(model, trim_tokens(tokens))


def trim_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """Tokens [N, 77] -> [N, L], L = the latest end-of-text position (the largest token ID) + 1."""
    return tokens[:, :int(tokens.argmax(dim=-1).max()) + 1]


def encode_text_prefix(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's encode_text of tokens already trimmed to their longest text: [N, L] -> [N, D] (traceable: the
    ONNX export of the text tower runs this with dynamic N and L)."""
    eot = tokens.argmax(dim=-1)  # [N]
    length = tokens.shape[1]
    x = model.token_embedding(tokens).type(model.dtype)  # [N, L, W]
    x = x + model.positional_embedding[:length].type(model.dtype)
    x = x.permute(1, 0, 2)  # [L, N, W], the layout of CLIP's transformer
    mask = None
    for block in model.transformer.resblocks:
        if mask is None:
            mask = block.attn_mask[:length, :length].to(dtype=x.dtype, device=x.device)
        y = block.ln_1(x)
        x = x + block.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        x = x + block.mlp(block.ln_2(x))
    x = model.ln_final(x.permute(1, 0, 2)).type(model.dtype)  # [N, L, W]
    return x[torch.arange(x.shape[0], device=x.device), eot] @ model.text_projection
