"""Helpers for the store behaviour suite: one library location (file or PostgreSQL) and child-process writers."""

from __future__ import annotations

import os
import time
from pathlib import Path

from clip_app.library import FeatureLibrary
from tests.support.fakes import color_encoder
from tests.support.library_helpers import image_bytes


def open_at(gallery: str | Path, library: str | Path, encoder=None, **kwargs: object) -> FeatureLibrary:
    """The library at this location (a file path or a postgresql:// URL) with the colour model."""
    return FeatureLibrary(gallery, library, encoder or color_encoder(), **kwargs)  # type: ignore[arg-type]


def child_add_at(gallery: str, library: str, colours: list[tuple[int, int, int]], barrier: object,
                 queue: object) -> None:
    """In another process: wait for the others, then add images one call at a time; report the IDs."""
    lib = open_at(gallery, library)
    barrier.wait()  # type: ignore[attr-defined]
    ids = []
    for rgb in colours:
        report = lib.add([(image_bytes(rgb, size=(20 + rgb[0] % 7, 20)), f"{rgb}.png")])
        ids.extend(r.id for r in report.added)
    queue.put(ids)  # type: ignore[attr-defined]


def child_hold_write(gallery: str, library: str, ready: object) -> None:
    """In another process: enter the write section, write a gallery file as a writer would, then hang (killed)."""
    lib = open_at(gallery, library)
    with lib.store.writing():
        (Path(gallery) / f".{'0' * 5}9.png.0badc0de.partial").write_bytes(b"half")
        ready.set()  # type: ignore[attr-defined]
        time.sleep(600)
    os._exit(0)


def child_add_later(gallery: str, library: str, colour: tuple[int, int, int], go: object, queue: object) -> None:
    """In another process (an app server): add one image when told to; report its ID."""
    lib = open_at(gallery, library)
    queue.put("ready")  # type: ignore[attr-defined]
    go.wait()  # type: ignore[attr-defined]
    report = lib.add([(image_bytes(colour), "late.png")])
    queue.put(report.added[0].id)  # type: ignore[attr-defined]
