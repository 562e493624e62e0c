"""Saved label sets: named lists of labels in a JSON file beside the library, plus a read-only ImageNet set.

A saved set may carry a trained classification head (clip_app.label_heads, written by `python -m clip_app.finetune
classify`): {"version": 1, "sets": {name: [labels]}, "heads": {name: {head JSON}}}. Files without "heads" read as
before; a set's head is dropped when its labels are saved changed, and follows it on rename and delete.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Callable, Sequence

from .classify import parse_labels
from .label_heads import HeadError, LabelHead
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
        self._parsed: tuple[tuple[int, int, int], dict[str, list[str]], dict[str, dict]] | None = None

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
    def head(self, name: str) -> LabelHead | None:
        """The trained head a saved set carries, or None; LabelSetError when it is damaged."""
        with self._lock:
            raw = self._read()[1].get(name)
        if raw is None:
            return None
        try:
            return LabelHead.from_json(raw)
        except HeadError as exc:
            raise LabelSetError(f"the head of label set {name!r} in {self.path} cannot be used: {exc}") from None

    def find_head(self, labels: Sequence[str], model: str) -> tuple[str, LabelHead] | None:
        """(set name, head) of the first saved set (by name) with exactly these labels and a head trained for
        `model` (an encoder identity), or None. Damaged heads are skipped with a warning."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LabelSetError(f"the label sets file {self.path} cannot be read ({exc})") from None
        signature = (stat.st_ino, stat.st_mtime_ns, stat.st_size)  # every save is a new file (os.replace)
        with self._lock:  # classify asks on every call: parse the file again only when it changed
            if self._parsed is None or self._parsed[0] != signature:
                self._parsed = (signature, *self._read())
            _, sets, heads = self._parsed
        wanted = list(labels)
        for name in sorted(heads, key=str.casefold):
            if sets.get(name) != wanted or not isinstance(heads[name], dict) or heads[name].get("model") != model:
                continue
            try:
                return name, LabelHead.from_json(heads[name])
            except HeadError as exc:
                log.warning("label set %r: its head is ignored (%s)", name, exc)
        return None

    def save(self, name: str, labels: str | Sequence[str], head: LabelHead | None = None) -> list[str]:
        """Save (or replace) a set from label text or a list, optionally with a trained head (one row per label);
        returns the cleaned labels. Saving changed labels without a head drops the set's old head."""
        name = self._check_name(name)
        cleaned = parse_labels(labels)
        if head is not None and len(head.weight) != len(cleaned):
            raise LabelSetError(f"the head has {len(head.weight)} classes but the set {len(cleaned)} labels")
        with self._lock:
            sets, heads = self._read()
            if head is not None:
                heads[name] = head.to_json()
            elif name in heads and sets.get(name) != cleaned:
                del heads[name]
            sets[name] = cleaned
            self._write(sets, heads)
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
            heads = self._read()[1]
            sets = {(new if key == old else key): value for key, value in sets.items()}
            heads = {(new if key == old else key): value for key, value in heads.items()}
            self._write(sets, heads)
        log.info("renamed label set %r to %r", old, new)

    def delete(self, name: str) -> None:
        """Delete a saved set."""
        self._check_writable(name)
        with self._lock:
            sets = self._load()
            if name not in sets:
                raise LabelSetError(f"there is no label set named {name!r}")
            heads = self._read()[1]
            del sets[name]
            heads.pop(name, None)
            self._write(sets, heads)
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
        return self._read()[0]

    def _read(self) -> tuple[dict[str, list[str]], dict[str, dict]]:
        """(sets, heads in their JSON form) from the file; LabelSetError when it cannot be read."""
        if not self.path.exists():
            return {}, {}
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            sets = raw["sets"]
            heads = raw.get("heads", {})
            if not isinstance(heads, dict):
                raise ValueError("'heads' must map set names to heads")
            if not isinstance(sets, dict) or not all(
                    isinstance(k, str) and isinstance(v, list) and all(isinstance(x, str) for x in v)
                    for k, v in sets.items()):
                raise ValueError("'sets' must map names to lists of labels")
            return {k: list(v) for k, v in sets.items()}, {k: v for k, v in heads.items() if k in sets}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LabelSetError(f"the label sets file {self.path} cannot be read ({exc}); fix or move it away "
                                "(it is left untouched)") from None

    def _write(self, sets: dict[str, list[str]], heads: dict[str, dict] | None = None) -> None:
        """Save atomically (the library's writer: temp file, fsync, os.replace); LabelSetError when it fails."""
        if heads is None:
            heads = self._read()[1]
        document: dict = {"version": FORMAT_VERSION, "sets": sets}
        if heads:
            document["heads"] = {k: v for k, v in heads.items() if k in sets}
        payload = json.dumps(document, ensure_ascii=False, indent=1)
        try:
            replace_atomically(self.path, lambda handle: handle.write(payload.encode("utf-8")))
        except LibraryWriteError as exc:
            raise LabelSetError(f"the label sets could not be saved: {exc}") from None
