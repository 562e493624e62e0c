"""Saved label sets: named lists of labels in a JSON file beside the library, plus a read-only ImageNet set."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Callable, Sequence

from .classify import parse_labels
from .library.errors import LibraryWriteError
from .library.fileformat import replace_atomically
from .library.store import LABEL_SETS_NAME
from .prompts import imagenet_classnames

log = logging.getLogger(__name__)

IMAGENET_SET = "ImageNet (1000 classes, built in)"
FORMAT_VERSION = 1
MAX_NAME_CHARS = 80


class LabelSetError(ValueError):
    """A label set operation that cannot be done (unknown name, read-only set, bad name, unreadable file)."""


def default_label_sets_file(library_file: Path) -> Path:
    """The label sets file that belongs to a library: `label_sets.json` in the same folder."""
    return Path(library_file).with_name(LABEL_SETS_NAME)


class LabelSetStore:
    """Named label sets kept in one JSON file ({"version": 1, "sets": {name: [labels]}}), written atomically.

    The built-in ImageNet set is always listed first and can be read but not saved over, renamed or deleted.
    A file that cannot be read is never overwritten: every operation that needs it raises LabelSetError.
    """

    def __init__(self, path: Path, builtin: dict[str, Callable[[], Sequence[str]]] | None = None) -> None:
        self.path = Path(path)
        self._builtin = builtin if builtin is not None else {IMAGENET_SET: imagenet_classnames}
        self._lock = threading.Lock()

    # ---- reading ------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every set's name: the built-in ones first, then the saved ones in alphabetical order."""
        with self._lock:
            return list(self._builtin) + sorted(self._load(), key=str.casefold)

    def get(self, name: str) -> list[str]:
        """The labels of a set; LabelSetError when there is no set of that name."""
        if name in self._builtin:
            return list(self._builtin[name]())
        with self._lock:
            sets = self._load()
        if name not in sets:
            raise LabelSetError(f"there is no label set named {name!r}")
        return list(sets[name])

    def builtin_names(self) -> list[str]:
        """The names of the built-in sets (they never need the file)."""
        return list(self._builtin)

    # ---- writing ------------------------------------------------------------------------------------------
    def save(self, name: str, labels: str | Sequence[str]) -> list[str]:
        """Save (or replace) a set from label text or a list; returns the cleaned labels."""
        name = self._check_name(name)
        cleaned = parse_labels(labels)
        with self._lock:
            sets = self._load()
            sets[name] = cleaned
            self._write(sets)
        log.info("saved label set %r (%d labels) to %s", name, len(cleaned), self.path)
        return cleaned

    def rename(self, old: str, new: str) -> None:
        """Give a saved set a new name; the new name must be free."""
        self._check_writable(old)
        new = self._check_name(new)
        with self._lock:
            sets = self._load()
            if old not in sets:
                raise LabelSetError(f"there is no label set named {old!r}")
            if new != old and new in sets:
                raise LabelSetError(f"a label set named {new!r} already exists; delete it first or pick another name")
            sets = {(new if key == old else key): value for key, value in sets.items()}
            self._write(sets)
        log.info("renamed label set %r to %r", old, new)

    def delete(self, name: str) -> None:
        """Delete a saved set."""
        self._check_writable(name)
        with self._lock:
            sets = self._load()
            if name not in sets:
                raise LabelSetError(f"there is no label set named {name!r}")
            del sets[name]
            self._write(sets)
        log.info("deleted label set %r", name)

    # ---- internals ----------------------------------------------------------------------------------------
    def _check_name(self, name: str) -> str:
        name = " ".join((name or "").split())
        if not name:
            raise LabelSetError("give the label set a name")
        if len(name) > MAX_NAME_CHARS:
            raise LabelSetError(f"a label set name has at most {MAX_NAME_CHARS} characters")
        self._check_writable(name)
        return name

    def _check_writable(self, name: str) -> None:
        if name in self._builtin:
            raise LabelSetError(f"{name!r} is built in and read-only; save your changes under a new name")

    def _load(self) -> dict[str, list[str]]:
        if not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            sets = raw["sets"]
            if not isinstance(sets, dict) or not all(
                    isinstance(k, str) and isinstance(v, list) and all(isinstance(x, str) for x in v)
                    for k, v in sets.items()):
                raise ValueError("'sets' must map names to lists of labels")
            return {k: list(v) for k, v in sets.items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LabelSetError(f"the label sets file {self.path} cannot be read ({exc}); fix or move it away "
                                "(it is left untouched)") from None

    def _write(self, sets: dict[str, list[str]]) -> None:
        """Save atomically (the library's writer: temp file, fsync, os.replace); LabelSetError when it fails."""
        payload = json.dumps({"version": FORMAT_VERSION, "sets": sets}, ensure_ascii=False, indent=1)
        try:
            replace_atomically(self.path, lambda handle: handle.write(payload.encode("utf-8")))
        except LibraryWriteError as exc:
            raise LabelSetError(f"the label sets could not be saved: {exc}") from None
