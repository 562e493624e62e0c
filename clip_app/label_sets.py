"""Saved label sets: named lists of labels in a JSON file beside the library, plus a read-only ImageNet set.

A saved set has labels, a template (a mode, "single" or "ensemble", or a custom template with one '{}'),
optional tag thresholds (one for the whole set, and per label), and whether the library is tagged with it. The file
is {"version": 2, "sets": {name: {"labels": [...], "template": T, "threshold": t or null, "thresholds": {label: t},
"tagged": bool, ...}}}; keys it does not know are kept as they are. A set with nothing but labels is written as a
plain list of labels, version 1's form (a file holding only such sets says version 1, so older versions read it).

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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .classify import LabelError, check_threshold, parse_labels
from .label_heads import HeadError, LabelHead
from .library.errors import LibraryWriteError
from .library.fileformat import replace_atomically
from .library.store import LABEL_SETS_NAME
from .prompts import imagenet_classnames, templates_for

log = logging.getLogger(__name__)

IMAGENET_SET = "ImageNet (1000 classes, built in)"
FORMAT_VERSION = 2
MAX_NAME_CHARS = 80


class LabelSetError(ValueError):
    """A label set operation that cannot be done (unknown name, read-only set, bad name, unreadable file)."""


def default_label_sets_file(library_file: Path) -> Path:
    """The label sets file that belongs to a library: `label_sets.json` in the same folder."""
    return Path(library_file).with_name(LABEL_SETS_NAME)


DEFAULT_TEMPLATE = "single"
KNOWN_KEYS = ("labels", "template", "threshold", "thresholds", "tagged")


@dataclass(frozen=True)
class LabelSet:
    """One label set as saved: labels, template, tag thresholds, whether the library is tagged with it."""

    name: str
    labels: tuple[str, ...]
    template: str = DEFAULT_TEMPLATE
    threshold: float | None = None  # the set's own default; None: the app's --tag-threshold
    thresholds: Mapping[str, float] = field(default_factory=dict)  # per label, overriding `threshold`
    tagged: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys written by others (kept as they are)

    def threshold_for(self, label: str, default: float) -> float:
        """The tag threshold of one label: its own, else the set's, else `default`."""
        if label in self.thresholds:
            return float(self.thresholds[label])
        return float(self.threshold) if self.threshold is not None else float(default)

    def to_json(self) -> list[str] | dict:
        """The set's entry in the file: a plain list of labels when nothing else is set (version 1's form)."""
        if (self.template == DEFAULT_TEMPLATE and self.threshold is None and not self.thresholds
                and not self.tagged and not self.extra):
            return list(self.labels)
        out = dict(self.extra)
        out.update(labels=list(self.labels), template=self.template, threshold=self.threshold,
                   thresholds=dict(self.thresholds), tagged=self.tagged)
        return out

    @classmethod
    def from_json(cls, name: str, raw: object) -> "LabelSet":
        """A set from its file entry (a version 1 list of labels, or a dict); ValueError when malformed."""
        if isinstance(raw, list):
            raw = {"labels": raw}
        if not isinstance(raw, dict):
            raise ValueError(f"set {name!r} must be a list of labels or an object")
        labels = raw.get("labels")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ValueError(f"set {name!r}: 'labels' must be a list of strings")
        template = raw.get("template", DEFAULT_TEMPLATE)
        threshold = raw.get("threshold")
        thresholds = raw.get("thresholds") or {}
        if not isinstance(template, str) or not isinstance(thresholds, dict):
            raise ValueError(f"set {name!r}: 'template' must be a string and 'thresholds' an object")
        try:
            threshold = None if threshold is None else check_threshold(threshold)
            thresholds = {str(k): check_threshold(v) for k, v in thresholds.items()}
        except LabelError as exc:
            raise ValueError(f"set {name!r}: {exc}") from None
        extra = {k: v for k, v in raw.items() if k not in KNOWN_KEYS}
        return cls(name, tuple(labels), template, threshold, thresholds, bool(raw.get("tagged", False)), extra)


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
        self._parsed: tuple[tuple[int, int, int], dict[str, LabelSet], dict[str, dict]] | None = None

    # ---- reading ------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every set's name: the built-in ones first, then the saved ones in alphabetical order."""
        with self._lock:
            return list(self._builtin) + sorted(self._load(), key=str.casefold)

    def get(self, name: str) -> list[str]:
        """The labels of a set; LabelSetError when there is no set of that name."""
        return list(self.get_set(name).labels)

    def get_set(self, name: str) -> LabelSet:
        """A whole set (labels, template, thresholds); LabelSetError when there is no set of that name."""
        if name in self._builtin:
            return LabelSet(name, tuple(self._builtin[name]()))
        with self._lock:
            sets = self._load()
        if name not in sets:
            raise LabelSetError(f"there is no label set named {name!r}")
        return sets[name]

    def saved_sets(self) -> list[LabelSet]:
        """Every saved set (not the built-in ones), in alphabetical order of name."""
        with self._lock:
            sets = self._load()
        return [sets[name] for name in sorted(sets, key=str.casefold)]

    def builtin_names(self) -> list[str]:
        """The names of the built-in sets (they never need the file)."""
        return list(self._builtin)

    def is_builtin(self, name: str) -> bool:
        """True for the read-only sets that ship with the app."""
        return name in self._builtin

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
            if (name not in sets or list(sets[name].labels) != wanted or not isinstance(heads[name], dict)
                    or heads[name].get("model") != model):
                continue
            try:
                return name, LabelHead.from_json(heads[name])
            except HeadError as exc:
                log.warning("label set %r: its head is ignored (%s)", name, exc)
        return None

    def save(self, name: str, labels: str | Sequence[str], template: str | None = None,
             head: LabelHead | None = None) -> list[str]:
        """Save (or replace) a set from label text or a list, optionally with a trained head (one row per label);
        returns the cleaned labels. Saving changed labels without a head drops the set's old head. A replaced set
        keeps its template (unless one is given), its thresholds of the labels it keeps, and its other settings."""
        name = self._check_name(name)
        cleaned = parse_labels(labels)
        if template is not None:
            template = check_template(template)
        if head is not None and len(head.weight) != len(cleaned):
            raise LabelSetError(f"the head has {len(head.weight)} classes but the set {len(cleaned)} labels")
        with self._lock:
            sets, heads, examples = self._read_all()
            old = sets.get(name) or LabelSet(name, ())
            if head is not None:
                heads[name] = head.to_json()
            elif name in heads and list(old.labels) != cleaned:
                del heads[name]
            kept = {k: v for k, v in old.thresholds.items() if k in cleaned}
            sets[name] = replace(old, labels=tuple(cleaned), template=template or old.template, thresholds=kept)
            if name in examples:  # examples of labels still in the set are kept (a label matched ignoring case)
                by_label = {label.casefold(): ids for label, ids in examples[name].items()}
                examples[name] = {label: by_label[label.casefold()] for label in cleaned
                                  if label.casefold() in by_label}
            self._write(sets, heads, examples)
        log.info("saved label set %r (%d labels) to %s", name, len(cleaned), self.path)
        return cleaned

    def update(self, name: str, **changes: Any) -> LabelSet:
        """Change a saved set's template, threshold, thresholds (merged per label; None removes one) or tagged
        flag; every value is checked first (LabelSetError / LabelError), nothing is stored when one is bad."""
        self._check_writable(name)
        with self._lock:
            sets = self._load()
            if name not in sets:
                raise LabelSetError(f"there is no label set named {name!r}")
            current = sets[name]
            values: dict[str, Any] = {}
            if "template" in changes:
                values["template"] = check_template(changes["template"])
            if "threshold" in changes:
                raw = changes["threshold"]
                values["threshold"] = None if raw is None else check_threshold(raw)
            if "thresholds" in changes:
                merged = dict(current.thresholds)
                for label, raw in (changes["thresholds"] or {}).items():
                    if label not in current.labels:
                        raise LabelSetError(f"the label set {name!r} has no label {label!r} (its labels: "
                                            f"{', '.join(current.labels)})")
                    if raw is None:
                        merged.pop(label, None)
                    else:
                        merged[label] = check_threshold(raw, f"threshold for {label!r}")
                values["thresholds"] = merged
            if "tagged" in changes:
                values["tagged"] = bool(changes["tagged"])
            unknown = set(changes) - {"template", "threshold", "thresholds", "tagged"}
            if unknown:
                raise TypeError(f"unknown label set fields: {sorted(unknown)}")
            sets[name] = replace(current, **values)
            self._write(sets)
        return sets[name]

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
            sets = {(new if key == old else key): (replace(value, name=new) if key == old else value)
                    for key, value in sets.items()}
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
        return _ordered(sets[name].labels, examples.get(name, {}))

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
            result = _ordered(sets[name].labels, examples[name])
        log.info("label set %r: %d example(s) of %r", name, len(result.get(label, [])), label)
        return result

    def remove_examples(self, name: str, label: str | None, ids: Sequence[int]) -> SetExamples:
        """Remove image IDs from the examples of one label (label None or '': of every label); an ID that is not an
        example there is a LabelSetError and nothing is removed. Returns the set's examples."""
        self._check_writable(name)
        wanted = {int(i) for i in ids}
        with self._lock:
            sets, examples = self._load_all()
            if name not in sets:
                raise LabelSetError(f"there is no label set named {name!r}")
            labels = [self._label_of(sets, name, label)] if label else list(sets[name].labels)
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
            return _ordered(sets[name].labels, examples[name])

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

    def _label_of(self, sets: dict[str, LabelSet], name: str, label: str) -> str:
        if name not in sets:
            raise LabelSetError(f"there is no label set named {name!r}")
        wanted = " ".join((label or "").split()).casefold()
        labels = sets[name].labels
        for candidate in labels:
            if candidate.casefold() == wanted:
                return candidate
        raise LabelSetError(f"{label!r} is not a label of {name!r} (its labels: {', '.join(labels[:10])}"
                            f"{', ...' if len(labels) > 10 else ''})")

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

    def _load(self) -> dict[str, LabelSet]:
        return self._read()[0]

    def _read(self) -> tuple[dict[str, LabelSet], dict[str, dict]]:
        """(sets, heads in their JSON form) from the file; LabelSetError when it cannot be read."""
        sets, heads, _ = self._read_all()
        return sets, heads

    def _load_all(self) -> tuple[dict[str, LabelSet], dict[str, SetExamples]]:
        """(sets, examples) from the file."""
        sets, _, examples = self._read_all()
        return sets, examples

    def _read_all(self) -> tuple[dict[str, LabelSet], dict[str, dict], dict[str, SetExamples]]:
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
            if not isinstance(sets, dict) or not all(isinstance(k, str) for k in sets):
                raise ValueError("'sets' must map names to label sets")
            if not isinstance(examples, dict) or not all(
                    isinstance(per, dict) and all(isinstance(lab, str) and isinstance(ids, list) and all(
                        isinstance(i, int) and not isinstance(i, bool) for i in ids) for lab, ids in per.items())
                    for per in examples.values()):
                raise ValueError("'examples' must map set names to {label: [image IDs]}")
            parsed = {k: LabelSet.from_json(k, v) for k, v in sets.items()}
            return (parsed, {k: v for k, v in heads.items() if k in sets},
                    {k: {lab: list(ids) for lab, ids in per.items()} for k, per in examples.items() if k in sets})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LabelSetError(f"the label sets file {self.path} cannot be read ({exc}); fix or move it away "
                                "(it is left untouched)") from None

    def _write(self, sets: dict[str, LabelSet], heads: dict[str, dict] | None = None,
               examples: dict[str, SetExamples] | None = None) -> None:
        """Save atomically (the library's writer: temp file, fsync, os.replace); LabelSetError when it fails.
        heads / examples None: those in the file are kept (for the sets still there)."""
        if heads is None or examples is None:
            _, file_heads, file_examples = self._read_all()
            heads = file_heads if heads is None else heads
            examples = file_examples if examples is None else examples
        entries = {k: v.to_json() for k, v in sets.items()}
        version = 1 if all(isinstance(v, list) for v in entries.values()) else FORMAT_VERSION  # readable by older apps
        document: dict = {"version": version, "sets": entries}
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


def check_template(template: str) -> str:
    """A set's template: "single", "ensemble" or a custom template with one '{}' (LabelSetError otherwise)."""
    template = (template or "").strip() or DEFAULT_TEMPLATE
    try:
        templates_for(template)
    except ValueError as exc:
        raise LabelSetError(str(exc)) from None
    return template


def _ordered(labels: Sequence[str], per_label: SetExamples) -> SetExamples:
    """Examples in the set's label order, labels without examples left out."""
    return {label: list(per_label[label]) for label in labels if per_label.get(label)}
