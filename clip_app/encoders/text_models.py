"""Which multilingual text towers are aligned to which image towers (data and pure checks, no loading).

A text tower trained to land in an image model's embedding space serves that model's image features unchanged
(the library is not re-encoded). Sources of the pairings:
- sentence-transformers' model card of clip-ViT-B-32-multilingual-v1 (a multilingual DistilBERT distilled onto
  OpenAI CLIP ViT-B/32's text tower; 50+ languages; 512-d);
- M-CLIP (github.com/FreddeFrallan/Multilingual-CLIP, larger_mclip.md, and the model cards on the Hugging Face hub):
  XLM-Roberta-Large-Vit-B-32 -> OpenAI ViT-B/32 (512-d), XLM-Roberta-Large-Vit-L-14 and LABSE-Vit-L-14 -> OpenAI
  ViT-L/14 (768-d), XLM-Roberta-Large-Vit-B-16Plus -> open_clip's ViT-B-16-plus-240 trained on LAION-400M (640-d),
  which is none of OpenAI's models. The same pairs are listed by clip-as-service (server/clip_server/model/mclip.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class TextModelMismatch(ValueError):
    """A text tower that is not aligned to the running image model (or whose width differs)."""


@dataclass(frozen=True)
class TextModelInfo:
    """One known multilingual text tower and the image tower whose space it was trained to land in."""

    name: str                #: the hub name
    family: str              #: 'sentence-transformers' or 'm-clip' (how it is loaded)
    image_models: tuple[str, ...]  #: identities of the image models it serves (OpenAI names, open_clip specs)
    aligned_to: str          #: the image tower, in words
    dim: int                 #: output width = the image tower's
    languages: str           #: what the query box says is accepted


_B32, _L14 = "ViT-B/32", "ViT-L/14"  # OpenAI's names; open_clip's `openai` tags are the same weights
_ST_LANGUAGES = "Chinese (simplified and traditional), Japanese, Korean, Arabic, Russian and 50+ other languages"
_MCLIP_LANGUAGES = "Chinese, Japanese, Korean, Russian, Arabic and the other languages of M-CLIP's training (48)"

KNOWN_TEXT_MODELS: tuple[TextModelInfo, ...] = (
    TextModelInfo("sentence-transformers/clip-ViT-B-32-multilingual-v1", "sentence-transformers",
                  (_B32, "open_clip:ViT-B-32/openai"), "OpenAI CLIP ViT-B/32", 512, _ST_LANGUAGES),
    TextModelInfo("M-CLIP/XLM-Roberta-Large-Vit-B-32", "m-clip", (_B32, "open_clip:ViT-B-32/openai"),
                  "OpenAI CLIP ViT-B/32", 512, _MCLIP_LANGUAGES),
    TextModelInfo("M-CLIP/XLM-Roberta-Large-Vit-L-14", "m-clip", (_L14, "open_clip:ViT-L-14/openai"),
                  "OpenAI CLIP ViT-L/14", 768, _MCLIP_LANGUAGES),
    TextModelInfo("M-CLIP/LABSE-Vit-L-14", "m-clip", (_L14, "open_clip:ViT-L-14/openai"), "OpenAI CLIP ViT-L/14",
                  768, _MCLIP_LANGUAGES),
    TextModelInfo("M-CLIP/XLM-Roberta-Large-Vit-B-16Plus", "m-clip", ("open_clip:ViT-B-16-plus-240/laion400m_e31",),
                  "open_clip ViT-B-16-plus-240 (laion400m_e31), none of OpenAI's models", 640, _MCLIP_LANGUAGES),
)

#: a folder of unknown origin: what the query box says
ANY_LANGUAGE = "the languages your text model was trained on"


def known_text_model(name: str) -> TextModelInfo | None:
    """The table entry of a hub name, with or without its organisation ('clip-ViT-B-32-multilingual-v1'), or of a
    local folder named like one; None when unknown."""
    key = str(name).strip().rstrip("/\\")
    tail = key.replace("\\", "/").split("/")[-1].casefold()
    for info in KNOWN_TEXT_MODELS:
        if key.casefold() == info.name.casefold() or tail == info.name.split("/")[-1].casefold():
            return info
    return None


def check_pairing(text_model: str, image_identity: str, image_dim: int, text_dim: int | None = None) -> None:
    """Refuse a text tower that is not aligned to the image model: a known name paired with another image model
    (the message names the right pairing), or any width other than the image model's. TextModelMismatch."""
    info = known_text_model(text_model)
    if info is not None and image_identity not in info.image_models:
        advice = f"run with --model {info.image_models[0]}"
        others = [k.name for k in KNOWN_TEXT_MODELS if image_identity in k.image_models]
        if others:
            advice += f", or with --model {image_identity} use --text-model {' or '.join(others)}"
        raise TextModelMismatch(f"text model {info.name} is aligned to {info.aligned_to}, not to the running image "
                                f"model {image_identity}: {advice}")
    width = text_dim if text_dim is not None else (info.dim if info else None)
    if width is not None and int(width) != int(image_dim):
        raise TextModelMismatch(f"text model {text_model} gives {width}-d features but the image model "
                                f"{image_identity} gives {image_dim}-d ones: they cannot share one embedding space "
                                "(use a text model aligned to this image model)")
    if info is None:
        log.warning("text model %s is not in the compatibility table: its width (%s) matches %s, but whether it "
                    "was trained to land in %s's embedding space cannot be checked", text_model, width,
                    image_identity, image_identity)


def is_local_folder(name: str) -> bool:
    """True when a --text-model value names an existing folder."""
    return Path(name).expanduser().is_dir()
