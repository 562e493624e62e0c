"""Saved label sets: named lists of labels in a JSON file beside the library, plus a read-only ImageNet set.

A saved set may carry a trained classification head (clip_app.label_heads, written by `python -m clip_app.finetune
classify`): {"version": 1, "sets": {name: [labels]}, "heads": {name: {head JSON}}}. Files without "heads" read as
before; a set's head is dropped when its labels are saved changed, and follows it on rename and delete.

A saved set can also hold example image IDs per label (few-shot adaptation, clip_app.adapt) under the optional
"examples" key ({name: {label: [image IDs]}}); they are stored by library image ID and disappear with their image.
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


#: Examples of one set: label -> library image IDs (labels in the set's order; only labels that have examples).
SetExamples = dict[str, list[int]]


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
            sets, heads, examples = self._read_all()
            if head is not None:
                heads[name] = head.to_json()
            elif name in heads and sets.get(name) != cleaned:
                del heads[name]
            sets[name] = cleaned
            if name in examples:  # examples of labels still in the set are kept (a label matched ignoring case)
                kept = {label.casefold(): ids for label, ids in examples[name].items()}
                examples[name] = {label: kept[label.casefold()] for label in cleaned if label.casefold() in kept}
            self._write(sets, heads, examples)
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
            _, heads, examples = self._read_all()
            sets = {(new if key == old else key): value for key, value in sets.items()}
            heads = {(new if key == old else key): value for key, value in heads.items()}
            examples = {(new if key == old else key): value for key, value in examples.items()}
            self._write(sets, heads, examples)
        log.info("renamed label set %r to %r", old, new)

    def delete(self, name: str) -> None:
        """Delete a saved set."""
        self._check_writable(name)
        with self._lock:
            sets = self._load()
            if name not in sets:
                raise LabelSetError(f"there is no label set named {name!r}")
            _, heads, examples = self._read_all()
            del sets[name]
            heads.pop(name, None)
            examples.pop(name, None)
            self._write(sets, heads, examples)
        log.info("deleted label set %r", name)

    # ---- examples (few-shot) ------------------------------------------------------------------------------
    def examples(self, name: str) -> SetExamples:
        """A set's examples: label -> image IDs (built-in sets have none); LabelSetError for an unknown set."""
        if name in self._builtin:
            return {}
        with self._lock:
            sets, examples = self._load_all()
        if name not in sets:
            raise LabelSetError(f"there is no label set named {name!r}")
        return _ordered(sets[name], examples.get(name, {}))

    def label_of(self, name: str, label: str) -> str:
        """The set's own spelling of a label given in any case (LabelSetError: unknown set or label)."""
        if name in self._builtin:
            raise LabelSetError(f"{name!r} is built in and read-only; save its labels under a new name")
        with self._lock:
            return self._label_of(self._load(), name, label)

    def add_examples(self, name: str, label: str, ids: Sequence[int]) -> SetExamples:
        """Add image IDs as examples of one label of a saved set (IDs already there are kept once); returns the
        set's examples."""
        self._check_writable(name)
        with self._lock:
            sets, examples = self._load_all()
            label = self._label_of(sets, name, label)
            current = examples.setdefault(name, {}).setdefault(label, [])
            current += [int(i) for i in dict.fromkeys(ids) if int(i) not in current]
            self._write(sets, examples=examples)
            result = _ordered(sets[name], examples[name])
        log.info("label set %r: %d example(s) of %r", name, len(result.get(label, [])), label)
        return result

    def remove_examples(self, name: str, label: str | None, ids: Sequence[int]) -> SetExamples:
        """Remove image IDs from the examples of one label (label None or '': of every label); an ID that is not an
        example there is a LabelSetError and nothing is removed. Returns the set's examples."""
        self._check_writable(name)
        wanted = {int(i) for i in ids}
        with self._lock:
            sets, examples = self._load_all()
            labels = [self._label_of(sets, name, label)] if label else list(sets.get(name, []))
            if name not in sets:
                raise LabelSetError(f"there is no label set named {name!r}")
            held = examples.get(name, {})
            present = {i for lab in labels for i in held.get(lab, [])}
            missing = sorted(wanted - present)
            if missing:
                where = f"label {labels[0]!r}" if label else "any label"
                raise LabelSetError(f"image ID(s) {', '.join(map(str, missing))} are not examples of {where} of "
                                    f"{name!r}; nothing was removed")
            for lab in labels:
                if lab in held:
                    held[lab] = [i for i in held[lab] if i not in wanted]
            examples[name] = {lab: ids for lab, ids in held.items() if ids}
            self._write(sets, examples=examples)
            return _ordered(sets[name], examples[name])

    def forget_images(self, ids: Sequence[int]) -> int:
        """Drop these image IDs from every set's examples (their images were deleted); returns how many example
        entries went. An unreadable file is left untouched (logged): examples of missing images are ignored when
        used anyway."""
        gone = {int(i) for i in ids}
        if not gone:
            return 0
        with self._lock:
            try:
                sets, examples = self._load_all()
            except LabelSetError as exc:
                log.warning("%s", exc)
                return 0
            removed = 0
            for per_label in examples.values():
                for label in list(per_label):
                    before = len(per_label[label])
                    per_label[label] = [i for i in per_label[label] if i not in gone]
                    removed += before - len(per_label[label])
                    if not per_label[label]:
                        del per_label[label]
            if removed:
                self._write(sets, examples=examples)
        return removed

    def _label_of(self, sets: dict[str, list[str]], name: str, label: str) -> str:
        if name not in sets:
            raise LabelSetError(f"there is no label set named {name!r}")
        wanted = " ".join((label or "").split()).casefold()
        for candidate in sets[name]:
            if candidate.casefold() == wanted:
                return candidate
        raise LabelSetError(f"{label!r} is not a label of {name!r} (its labels: {', '.join(sets[name][:10])}"
                            f"{', ...' if len(sets[name]) > 10 else ''})")

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
        sets, heads, _ = self._read_all()
        return sets, heads

    def _load_all(self) -> tuple[dict[str, list[str]], dict[str, SetExamples]]:
        """(sets, examples) from the file."""
        sets, _, examples = self._read_all()
        return sets, examples

    def _read_all(self) -> tuple[dict[str, list[str]], dict[str, dict], dict[str, SetExamples]]:
        """(sets, heads in their JSON form, examples) from the file; LabelSetError when it cannot be read."""
        try:
            raw = self._read_document()
            if raw is None:
                return {}, {}, {}
            sets = raw["sets"]
            heads = raw.get("heads", {})
            examples = raw.get("examples", {})
            if not isinstance(heads, dict):
                raise ValueError("'heads' must map set names to heads")
            if not isinstance(sets, dict) or not all(
                    isinstance(k, str) and isinstance(v, list) and all(isinstance(x, str) for x in v)
                    for k, v in sets.items()):
                raise ValueError("'sets' must map names to lists of labels")
            if not isinstance(examples, dict) or not all(
                    isinstance(per, dict) and all(isinstance(lab, str) and isinstance(ids, list) and all(
                        isinstance(i, int) and not isinstance(i, bool) for i in ids) for lab, ids in per.items())
                    for per in examples.values()):
                raise ValueError("'examples' must map set names to {label: [image IDs]}")
            return ({k: list(v) for k, v in sets.items()}, {k: v for k, v in heads.items() if k in sets},
                    {k: {lab: list(ids) for lab, ids in per.items()} for k, per in examples.items() if k in sets})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LabelSetError(f"the label sets file {self.path} cannot be read ({exc}); fix or move it away "
                                "(it is left untouched)") from None

    def _write(self, sets: dict[str, list[str]], heads: dict[str, dict] | None = None,
               examples: dict[str, SetExamples] | None = None) -> None:
        """Save atomically (the library's writer: temp file, fsync, os.replace); LabelSetError when it fails.
        heads / examples None: those in the file are kept (for the sets still there)."""
        if heads is None or examples is None:
            _, file_heads, file_examples = self._read_all()
            heads = file_heads if heads is None else heads
            examples = file_examples if examples is None else examples
        document: dict = {"version": FORMAT_VERSION, "sets": sets}
        if heads:
            document["heads"] = {k: v for k, v in heads.items() if k in sets}
        kept = {name: per for name, per in examples.items() if name in sets and per}
        if kept:
            document["examples"] = kept
        self._write_document(document)

    def _read_document(self) -> dict | None:
        """The stored document (the JSON of label_sets.json), or None when there is none yet."""
        if not self.path.exists():
            return None
        return json.loads(self.path.read_text(encoding="utf-8"))

    def _write_document(self, document: dict) -> None:
        """Store the document atomically (temp file, fsync, os.replace); LabelSetError when it fails."""
        payload = json.dumps(document, ensure_ascii=False, indent=1)
        try:
            replace_atomically(self.path, lambda handle: handle.write(payload.encode("utf-8")))
        except LibraryWriteError as exc:
            raise LabelSetError(f"the label sets could not be saved: {exc}") from None


def _ordered(labels: Sequence[str], per_label: SetExamples) -> SetExamples:
    """Examples in the set's label order, labels without examples left out."""
    return {label: list(per_label[label]) for label in labels if per_label.get(label)}
