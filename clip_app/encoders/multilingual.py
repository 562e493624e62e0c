"""Multilingual text towers: a sentence-transformers model or an M-CLIP model, as a TextEncoder.

Both are text-only encoders trained to land in an image model's embedding space (see text_models.py for which one);
they give float32 unit rows [N, D] on the CPU, truncate long inputs and keep an LRU cache of text features like
ClipEncoder's. A hub name is downloaded once into the weights folder (--model-dir); a local folder loads offline.

M-CLIP's published format (github.com/FreddeFrallan/Multilingual-CLIP): a folder with config.json
(model_type 'M-CLIP', modelBase, transformerDimensions, numDims), the weights (`transformer.*` = a Hugging Face
XLM-R (or BERT) model, `LinearTransformation.*` = a linear map to the image width) and the tokenizer files; the
feature is the attention-masked mean of the last hidden states, then the linear map. The loader here is our own.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .base import ModelLoadError, l2_normalize
from .text_models import ANY_LANGUAGE, known_text_model

log = logging.getLogger(__name__)

TEXT_CACHE_SIZE = 20_000
TEXT_BATCH_SIZE = 64
MAX_TOKENS = 128  #: inputs are truncated to this many tokens (clip-ViT-B-32-multilingual-v1's own limit)

#: M-CLIP's modelBase names whose architecture is known without a download (XLM-RoBERTa large, as published)
KNOWN_BASES: dict[str, dict[str, Any]] = {
    "xlm-roberta-large": dict(model_type="xlm-roberta", vocab_size=250002, hidden_size=1024, num_hidden_layers=24,
                              num_attention_heads=16, intermediate_size=4096, max_position_embeddings=514,
                              type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
                              eos_token_id=2),
}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: files of other frameworks in the hub repositories, never downloaded (M-CLIP's tf_model.h5 alone is 2.2 GB)
_OTHER_FRAMEWORKS = ("*.h5", "*.msgpack", "*.onnx", "onnx/*", "openvino/*", "*.ot", "rust_model*", "flax_model*",
                     "tf_model*", "coreml/*")


class CachedTextTower:
    """A TextEncoder over a function strings -> raw features [N, D]: batches, unit rows, an LRU cache of texts."""

    def __init__(self, forward: Callable[[list[str]], torch.Tensor], *, name: str, identity: str, dim: int,
                 languages: str, text_cache_size: int = TEXT_CACHE_SIZE) -> None:
        self._forward = forward
        self.name, self.identity, self.dim, self.languages = name, identity, int(dim), languages
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_size = text_cache_size
        self._lock = threading.Lock()
        self.cache_hits = 0
        self.cache_misses = 0
        self.encoded = 0  #: texts that went through the model (not the cache): shows which tower ran

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> float32 unit rows [N, D]; long texts are truncated; each distinct text is encoded once."""
        texts = list(texts)
        with self._lock:
            known = {t: self._cache[t] for t in texts if t in self._cache}
            missing = [t for t in dict.fromkeys(texts) if t not in known]
            self.cache_hits += len(texts) - len(missing)
            self.cache_misses += len(missing)
        fresh: dict[str, torch.Tensor] = dict(known)
        for start in range(0, len(missing), TEXT_BATCH_SIZE):
            batch = missing[start:start + TEXT_BATCH_SIZE]
            with torch.inference_mode():
                rows = l2_normalize(self._forward(batch)).cpu()
            fresh.update(zip(batch, rows))
        with self._lock:
            self.encoded += len(missing)
            for text, row in fresh.items():
                self._cache[text] = row
                self._cache.move_to_end(text)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return torch.stack([fresh[t] for t in texts]) if texts else torch.empty(0, self.dim)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, dim={self.dim})"


def load_text_model(source: str, device: str = "cpu", model_dir: str | os.PathLike[str] | None = None,
                    text_cache_size: int = TEXT_CACHE_SIZE) -> CachedTextTower:
    """A multilingual text tower from a hub name or a local folder (sentence-transformers or M-CLIP format).
    ModelLoadError with the way out when it cannot be loaded."""
    source = str(source).strip()
    if not source:
        raise ModelLoadError("no text model given: pass a hub name or the path of a local folder")
    path = Path(source).expanduser()
    info = known_text_model(source)
    if path.is_dir():
        folder, name = path.resolve(), path.name
    elif path.exists():
        raise ModelLoadError(f"text model {source} is a file: pass the folder that holds the model (a "
                             "sentence-transformers folder with modules.json, or an M-CLIP folder with config.json)")
    elif source.startswith(("/", ".", "~")) or source.count("/") > 1:
        raise ModelLoadError(f"text model folder not found: {source}")
    else:
        folder, name = None, info.name if info else source
    try:
        where = folder if folder is not None else _download(name, model_dir)  # a hub name: once, then offline
        forward, dim = _load_mclip(where, device) if _is_mclip(where) else _load_st(str(where), device)
    except ModelLoadError:
        raise
    except Exception as exc:  # missing files, corrupt weights, network errors, wrong formats
        raise ModelLoadError(_failure_message(source, folder, model_dir, exc)) from exc
    identity = f"folder:{folder}" if folder is not None else name
    languages = info.languages if info else ANY_LANGUAGE
    log.info("loaded text model %s on %s (dim %d)", name, device, dim)
    return CachedTextTower(forward, name=name, identity=identity, dim=dim, languages=languages,
                           text_cache_size=text_cache_size)


def _failure_message(source: str, folder: Path | None, model_dir: Any, exc: Exception) -> str:
    reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    if folder is not None:
        return (f"could not load the text model folder {folder}: {reason}. It must be a sentence-transformers "
                "folder (modules.json, config.json, the weights and tokenizer files, as SentenceTransformer.save "
                "writes it) or an M-CLIP folder (config.json with model_type 'M-CLIP', the weights, the tokenizer)")
    where = model_dir or "the Hugging Face cache"
    tail = source.split("/")[-1]
    return (f"could not load text model {source!r}: it is not in {where} and could not be downloaded ({reason}). "
            f"On an offline machine, copy the model's folder here from a machine that has it and pass it: "
            f"--text-model /path/to/{tail} (or CLIP_APP_TEXT_MODEL=/path/to/{tail}); a download by name goes into "
            "the folder named by --model-dir / CLIP_APP_MODEL_DIR")


# ---- sentence-transformers ------------------------------------------------------------------------------------
def _load_st(folder: str, device: str) -> tuple[Callable[[list[str]], torch.Tensor], int]:
    from sentence_transformers import SentenceTransformer

    if not (Path(folder) / "modules.json").is_file():
        raise ModelLoadError(f"{folder} is not a sentence-transformers folder (no modules.json) nor an M-CLIP "
                             "folder (no config.json with model_type 'M-CLIP')")
    model = SentenceTransformer(folder, device=device, local_files_only=True)
    model.eval()
    if not model.max_seq_length or model.max_seq_length > MAX_TOKENS:
        model.max_seq_length = MAX_TOKENS

    def forward(texts: list[str]) -> torch.Tensor:
        return model.encode(texts, batch_size=TEXT_BATCH_SIZE, convert_to_tensor=True, show_progress_bar=False,
                            normalize_embeddings=False).float()

    return forward, int(forward(["a"]).shape[-1])


# ---- M-CLIP ---------------------------------------------------------------------------------------------------
def _is_mclip(folder: Path) -> bool:
    config = folder / "config.json"
    if not config.is_file() or (folder / "modules.json").is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") == "M-CLIP"
    except (OSError, ValueError):
        return False


def _download(repo: str, model_dir: str | os.PathLike[str] | None) -> Path:
    """The local folder of a hub model in the weights folder, downloaded on first use (PyTorch files only)."""
    from huggingface_hub import snapshot_download

    kwargs: dict[str, Any] = {"ignore_patterns": list(_OTHER_FRAMEWORKS)}
    if model_dir:
        kwargs["cache_dir"] = str(model_dir)
    try:  # what was downloaded once loads without asking the network again
        return Path(snapshot_download(repo, local_files_only=True, **kwargs))
    except Exception:
        return Path(snapshot_download(repo, **kwargs))


def _base_config(raw: dict[str, Any], folder: Path) -> Any:
    """The Hugging Face config of M-CLIP's transformer: from config.json's own fields, a local modelBase folder or
    the known published bases."""
    from transformers import AutoConfig

    fields = {k: v for k, v in raw.items() if k not in ("model_type", "architectures", "modelBase",
                                                        "transformerDimensions", "numDims", "auto_map")}
    if "hidden_size" in raw:
        return AutoConfig.for_model(raw.get("base_model_type", "xlm-roberta"), **fields)
    base = str(raw.get("modelBase", "xlm-roberta-large"))
    if (folder / base).is_dir() or Path(base).is_dir():
        return AutoConfig.from_pretrained(str(folder / base if (folder / base).is_dir() else base))
    known = KNOWN_BASES.get(base.split("/")[-1])
    if known is None:
        raise ModelLoadError(f"M-CLIP folder {folder}: unknown modelBase {base!r} (known: {', '.join(KNOWN_BASES)}); "
                             "put the base model's config fields in config.json")
    known = dict(known)
    return AutoConfig.for_model(known.pop("model_type"), **known)


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    for file in _WEIGHT_FILES:
        if (folder / file).is_file():
            if file.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(str(folder / file))
            return torch.load(folder / file, map_location="cpu", weights_only=True)
    raise ModelLoadError(f"M-CLIP folder {folder} has no weights ({' or '.join(_WEIGHT_FILES)})")


def _load_mclip(folder: Path, device: str) -> tuple[Callable[[list[str]], torch.Tensor], int]:
    from transformers import AutoModel, AutoTokenizer

    raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    width, dim = int(raw["transformerDimensions"]), int(raw["numDims"])
    transformer = AutoModel.from_config(_base_config(raw, folder))
    projection = torch.nn.Linear(width, dim)
    state = _read_weights(folder)
    own = {k.removeprefix("transformer."): v for k, v in state.items() if k.startswith("transformer.")}
    missing, unexpected = transformer.load_state_dict(own, strict=False)
    missing = [k for k in missing if "position_ids" not in k and "pooler" not in k]
    if missing or not own:
        raise ModelLoadError(f"M-CLIP folder {folder}: the weights do not fit its transformer (missing "
                             f"{', '.join(missing[:5]) or 'every transformer.* weight'})")
    projection.load_state_dict({"weight": state["LinearTransformation.weight"],
                                "bias": state["LinearTransformation.bias"]})
    transformer.to(device).eval()
    projection.to(device).eval()
    # the base's config, so a folder whose tokenizer_config.json names no class gets the base's tokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(folder), config=transformer.config)
    limit = min(MAX_TOKENS, int(getattr(transformer.config, "max_position_embeddings", MAX_TOKENS + 2)) - 2)

    def forward(texts: list[str]) -> torch.Tensor:
        tokens = tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt").to(device)
        hidden = transformer(**tokens)[0]  # [N, L, W]
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [N, L, 1]
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)  # [N, W]
        return projection(pooled).float()  # [N, D]

    return forward, dim
