"""clip-app: zero-shot classification, image search and a feature library around OpenAI CLIP.

The public face: `from clip_app import ClipEncoder, FeatureLibrary, App, ...`. Names load on first use (PEP 562),
so `import clip_app` stays light (no torch until a name that needs it is asked for).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_HOMES = {
    "ClipEncoder": "clip_app.encoders",
    "Encoder": "clip_app.encoders",
    "open_image": "clip_app.images",
    "parse_labels": "clip_app.classify",
    "build_classifier": "clip_app.classify",
    "rank": "clip_app.classify",
    "templates_for": "clip_app.prompts",
    "FeatureLibrary": "clip_app.library",
    "App": "clip_app.service",
}
__all__ = ["ClipEncoder", "Encoder", "open_image", "parse_labels", "build_classifier", "rank", "templates_for",
           "FeatureLibrary", "App"]
assert set(__all__) == set(_HOMES)

if TYPE_CHECKING:  # pragma: no cover
    from .classify import build_classifier, parse_labels, rank
    from .encoders import ClipEncoder, Encoder
    from .images import open_image
    from .library import FeatureLibrary
    from .prompts import templates_for
    from .service import App


def __getattr__(name: str) -> Any:
    """Import a public name from its home module on first access."""
    if name not in _HOMES:
        raise AttributeError(f"module 'clip_app' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
