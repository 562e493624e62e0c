"""The product pieces the performance benchmark times, found at run time: the feature library (clip_app.library)
and the App (clip_app.service) are optional so that the benchmark runs, and says what is pending, on a build
that does not have them yet."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

from ..encoders import ClipEncoder

log = logging.getLogger(__name__)


def optional_module(name: str) -> ModuleType | None:
    """The module, or None when this build does not have it (any other import error is raised)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


def library_module() -> ModuleType | None:
    """clip_app.library, or None before the feature library is part of the build."""
    return optional_module("clip_app.library")


def service_module() -> ModuleType | None:
    """clip_app.service, or None before the App is part of the build."""
    return optional_module("clip_app.service")


def open_library(folder: Path, encoder: ClipEncoder, batch_size: int) -> Any:
    """A FeatureLibrary with its gallery and file under `folder` (created empty when new)."""
    library = library_module()
    if library is None:
        raise RuntimeError("clip_app.library is not part of this build")
    folder.mkdir(parents=True, exist_ok=True)
    return library.FeatureLibrary(folder / "gallery", folder / "features_library.pth", encoder,
                                  batch_size=batch_size)


def make_app(folder: Path, encoder: ClipEncoder, batch_size: int) -> Any:
    """An App over this encoder and a library under `folder` (label sets stored there too)."""
    service = service_module()
    if service is None:
        raise RuntimeError("clip_app.service is not part of this build")
    label_sets = optional_module("clip_app.label_sets")
    store = label_sets.LabelSetStore(folder / "label_sets.json") if label_sets is not None else None
    return service.App(encoder, open_library(folder, encoder, batch_size), store)
