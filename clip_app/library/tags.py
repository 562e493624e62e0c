"""Tags over the whole library: the labels of a label set given to every image whose stored feature reaches each
label's threshold, kept with their provenance in a companion file of the library, ``<library_file>.tags`` (for a
PostgreSQL library the same bytes in its `<table>_blobs` table: pg_store.PgTagFile).

The file loads with ``torch.load(path, weights_only=True)``::

    {"version": 1, "kind": "tags", "sets": {NAME: {
        "model": identity of the model whose features and text encoder made it,
        "labels": [str] (C), "template": str, "thresholds": float32 [C],
        "classifier": float32 [D, C] (the label columns, built as Classify builds them),
        "ids": int64 [N] (ascending: the images scored), "cosines": float32 [N, C]}}}

Image n carries label c exactly when cosines[n, c] >= thresholds[c]. Keeping the cosines makes a new threshold a
comparison, not a matrix product, and lets the app count and show the borderline images of a threshold live.
Every read brings a set up to date with the library and the label set: rows of deleted images are dropped, images
added since are scored with the stored classifier, new thresholds are applied, and new labels, another template or
another model recompute the set (one matrix product over the stored float16 rows; nothing is re-encoded). The file
is derived data: a damaged one is reported by `check` and rebuilt by `repair`, and never stops the app.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

import torch

from ..classify import ClassifierCache, TextEncoder, ThresholdError, tag_mask
from ..files import file_signature
from ..label_sets import LabelSet, LabelSetError, LabelSetStore
from ..prompts import family_templates
from .errors import LibraryError
from .fileformat import load_failure_reason, replace_atomically
from .reports import Problem
from .state import sorted_member
from .store import TAGS_SUFFIX

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHUNK_ROWS = 16384  # rows per matrix product: bounded memory, progress between chunks
Progress = Callable[[int, int], None]


class TagsError(LibraryError):
    """Tags cannot be made or read as asked (a set that cannot be tagged, a damaged tags file)."""


class UnknownTagError(TagsError, KeyError):
    """A label that no tagged set has."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def tags_path(library_file: Path) -> Path:
    """The tags file of a library file: features_library.pth -> features_library.pth.tags."""
    library_file = Path(library_file)
    return library_file.with_name(library_file.name + TAGS_SUFFIX)


@dataclass(frozen=True)
class SetTags:
    """The tags of one label set over the library, with what made them."""

    name: str
    model: str
    labels: tuple[str, ...]
    template: str
    thresholds: torch.Tensor  # float32 [C]
    classifier: torch.Tensor  # float32 [D, C]
    ids: torch.Tensor  # int64 [N], ascending
    cosines: torch.Tensor  # float32 [N, C]
    examples: str = ""  # the few-shot examples the classifier was blended with (examples_key); "" for none

    def column(self, label: str) -> int:
        """The index of a label (UnknownTagError when the set has no such label)."""
        try:
            return self.labels.index(label)
        except ValueError:
            raise UnknownTagError(f"the label set {self.name!r} has no label {label!r} (its labels: "
                                  f"{', '.join(self.labels)})") from None

    def mask(self) -> torch.Tensor:
        """bool [N, C]: image n carries label c."""
        return tag_mask(self.cosines, self.thresholds)

    def ids_with(self, label: str, threshold: float | None = None) -> torch.Tensor:
        """IDs [M] (ascending) tagged with a label at its threshold (or at the one given)."""
        c = self.column(label)
        limit = float(self.thresholds[c]) if threshold is None else float(threshold)
        return self.ids[self.cosines[:, c] >= limit]

    def counts(self) -> dict[str, int]:
        """label -> number of images carrying it."""
        return dict(zip(self.labels, (int(n) for n in self.mask().sum(dim=0).tolist())))

    def borderline(self, label: str, threshold: float, n: int = 6) -> tuple[list[tuple[int, float]],
                                                                             list[tuple[int, float]]]:
        """The n images just above (or at) and just below a threshold for a label: ([(id, cosine)] closest first,
        twice)."""
        cos = self.cosines[:, self.column(label)]
        above = torch.nonzero(cos >= threshold).flatten()
        below = torch.nonzero(cos < threshold).flatten()
        up = above[torch.argsort(cos[above], stable=True)[:n]]
        down = below[torch.argsort(cos[below], descending=True, stable=True)[:n]]
        return ([(int(self.ids[i]), float(cos[i])) for i in up], [(int(self.ids[i]), float(cos[i])) for i in down])

    def to_dict(self) -> dict:
        return {"model": self.model, "labels": list(self.labels), "template": self.template,
                "thresholds": self.thresholds.float().contiguous(), "classifier": self.classifier.float().contiguous(),
                "ids": self.ids.contiguous(), "cosines": self.cosines.float().contiguous(),
                **({"examples": self.examples} if self.examples else {})}

    @classmethod
    def from_dict(cls, name: str, raw: object) -> "SetTags":
        """A set's tags from the file; ValueError when anything is malformed or inconsistent."""
        if not isinstance(raw, dict):
            raise ValueError(f"set {name!r} is not a dict")
        labels, template, model = raw.get("labels"), raw.get("template"), raw.get("model")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels) or not labels:
            raise ValueError(f"set {name!r}: 'labels' must be a non-empty list of strings")
        if not isinstance(template, str) or not isinstance(model, str):
            raise ValueError(f"set {name!r}: 'template' and 'model' must be strings")
        examples = raw.get("examples", "")
        if not isinstance(examples, str):
            raise ValueError(f"set {name!r}: 'examples' must be a string")
        tensors = {key: raw.get(key) for key in ("thresholds", "classifier", "ids", "cosines")}
        if not all(isinstance(t, torch.Tensor) for t in tensors.values()):
            raise ValueError(f"set {name!r}: thresholds, classifier, ids and cosines must be tensors")
        c, ids, cos, weights = len(labels), tensors["ids"], tensors["cosines"], tensors["classifier"]
        if (tensors["thresholds"].shape != (c,) or weights.dim() != 2 or weights.shape[1] != c
                or ids.dim() != 1 or ids.dtype != torch.int64 or cos.shape != (len(ids), c)):
            raise ValueError(f"set {name!r}: tensor shapes disagree with its {c} labels")
        if len(ids) > 1 and not bool((ids[1:] > ids[:-1]).all()):
            raise ValueError(f"set {name!r}: ids must be unique and ascending")
        if not bool(torch.isfinite(cos).all()) or not bool(torch.isfinite(weights).all()):
            raise ValueError(f"set {name!r}: cosines and classifier must be finite")
        return cls(name, model, tuple(labels), template, tensors["thresholds"].float(), weights.float(), ids,
                   cos.float(), examples)


def score_rows(features: torch.Tensor, classifier: torch.Tensor, progress: Progress | None = None,
               chunk: int = CHUNK_ROWS) -> torch.Tensor:
    """Cosines [N, C] float32 of stored rows [N, D] (float16) with classifier columns [D, C]: one matrix product,
    chunked over rows (float32 arithmetic, so a tag is decided on the exact cosine of the stored row)."""
    weights = classifier.float()
    n = features.shape[0]
    out = torch.empty(n, weights.shape[1], dtype=torch.float32)
    for start in range(0, n, chunk):
        torch.matmul(features[start:start + chunk].float(), weights, out=out[start:start + chunk])
        if progress:
            progress(min(n, start + chunk), n)
    return out


def thresholds_of(label_set: LabelSet, default: float) -> torch.Tensor:
    """float32 [C]: each label's threshold (its own, else the set's, else `default`)."""
    return torch.tensor([label_set.threshold_for(label, default) for label in label_set.labels], dtype=torch.float32)


def compute(label_set: LabelSet, default: float, model: str, classifier: torch.Tensor, ids: torch.Tensor,
            features: torch.Tensor, progress: Progress | None = None) -> SetTags:
    """The tags of a set over library rows: IDs [N], stored features [N, D], classifier [D, C]."""
    return SetTags(label_set.name, model, tuple(label_set.labels), label_set.template,
                   thresholds_of(label_set, default), classifier.float(), ids.clone(),
                   score_rows(features, classifier, progress))


def synced(tags: SetTags, ids: torch.Tensor, features: torch.Tensor) -> SetTags:
    """The tags with the rows of deleted images dropped and the images not scored yet scored with the stored
    classifier (IDs [N] ascending and features [N, D] of the library now)."""
    if torch.equal(tags.ids, ids):
        return tags
    keep = sorted_member(tags.ids, ids)
    new_rows = torch.nonzero(~sorted_member(ids, tags.ids)).flatten()
    all_ids = torch.cat([tags.ids[keep], ids[new_rows]])
    all_cos = torch.cat([tags.cosines[keep], score_rows(features[new_rows], tags.classifier)])
    order = torch.argsort(all_ids)
    return replace(tags, ids=all_ids[order], cosines=all_cos[order])


class TagFile:
    """The tags file: read (cached by its signature) and written atomically as a whole. Subclasses keep the same
    bytes elsewhere (pg_store.PgTagFile: in the PostgreSQL library) by overriding _stamp, _raw and _write."""

    def __init__(self, path: Path) -> None:
        self.path: Path | None = Path(path)
        self.name = self.path.name  # for check's problems
        self.where = f"the tags file {self.path}"  # for messages
        self._cache: tuple[object, dict[str, SetTags]] | None = None

    def _stamp(self) -> object | None:
        """What changes whenever the tags are written (None: there are none)."""
        return file_signature(self.path)  # type: ignore[arg-type]

    def _raw(self) -> object:
        return torch.load(self.path, map_location="cpu", weights_only=True)  # type: ignore[arg-type]

    def _write(self, data: dict) -> object:
        """Write the whole tags data atomically; returns the new stamp."""
        replace_atomically(self.path, lambda handle: torch.save(data, handle))  # type: ignore[arg-type]
        return file_signature(self.path)  # type: ignore[arg-type]

    def load(self) -> dict[str, SetTags]:
        """Every set's tags ({} without a file); TagsError naming the file when it cannot be read."""
        sig = self._stamp()
        if sig is None:
            return {}
        if self._cache is not None and self._cache[0] == sig:
            return dict(self._cache[1])
        try:
            raw = self._raw()
        except Exception as exc:  # torch's unpickling errors have no common base
            raise TagsError(f"{self.where} cannot be read: {load_failure_reason(exc)}; run repair to rebuild it "
                            "(tags are recomputed from the library)") from None
        try:
            if not isinstance(raw, dict) or raw.get("kind") != "tags" or not isinstance(raw.get("sets"), dict):
                raise ValueError("not a tags file (no kind 'tags' and sets)")
            if raw.get("version") != FORMAT_VERSION:
                raise ValueError(f"unknown version {raw.get('version')!r}")
            sets = {str(name): SetTags.from_dict(str(name), value) for name, value in raw["sets"].items()}
        except (ValueError, TypeError, AttributeError) as exc:
            raise TagsError(f"{self.where} cannot be read ({exc}); run repair to rebuild it (tags are recomputed "
                            "from the library)") from None
        self._cache = (sig, sets)
        return dict(sets)

    def save(self, sets: Mapping[str, SetTags]) -> None:
        """Write every set atomically; LibraryWriteError when it fails."""
        data = {"version": FORMAT_VERSION, "kind": "tags", "sets": {k: v.to_dict() for k, v in sets.items()}}
        self._cache = (self._write(data), dict(sets))


class Library(Protocol):
    """What tagging needs from the feature library (FeatureLibrary provides it)."""

    def tag_rows(self) -> tuple[str, torch.Tensor, torch.Tensor]: ...  # (model, ids [N], float16 features [N, D])


class LibraryTags:
    """Tags of the label sets over one library: tag, read (always up to date), check and repair. Thread-safe."""

    def __init__(self, path: Path | TagFile, label_sets: LabelSetStore, classifiers: ClassifierCache,
                 default_threshold: float = 0.25,
                 classifier_for: Callable[[LabelSet], torch.Tensor] | None = None) -> None:
        self.file = path if isinstance(path, TagFile) else TagFile(path)
        self.label_sets = label_sets
        self.classifiers = classifiers
        #: the set's classifier [D, C] as Classify builds it (the App's: routed text tower, Chinese templates, the
        #: few-shot prototype blend when the set has examples); None: CLIP's text tower with the set's templates
        self.classifier_for = classifier_for
        self.default_threshold = float(default_threshold)
        self._lock = threading.Lock()

    @property
    def path(self) -> Path | None:
        """The tags file (None: the tags live in the PostgreSQL library)."""
        return self.file.path

    def _label_set(self, name: str) -> LabelSet:
        if not name or not str(name).strip():
            raise LabelSetError("pick a label set first")
        if self.label_sets.is_builtin(name):
            raise LabelSetError(f"{name!r} is built in and read-only: save its labels under a new name to tag the "
                                "library with them (its thresholds are stored in the set)")
        return self.label_sets.get_set(name)

    def _load_or_empty(self) -> dict[str, SetTags]:
        try:
            return self.file.load()
        except TagsError as exc:  # derived data: recompute rather than stop; check reports it, repair rewrites it
            log.warning("%s", exc)
            return {}

    def _fresh(self, stored: SetTags | None, label_set: LabelSet, model: str, ids: torch.Tensor,
               features: torch.Tensor, encoder: TextEncoder, progress: Progress | None = None) -> SetTags:
        """The set's tags up to date with the label set and the library (recomputed only where needed: other
        labels, template, model, or, with classifier_for, other few-shot examples). Up to date tags never need the
        text encoder (the index manager works offline)."""
        examples = self._examples_key(label_set.name) if self.classifier_for is not None else ""
        if (stored is None or stored.model != model or stored.labels != tuple(label_set.labels)
                or stored.template != label_set.template or stored.examples != examples):
            if self.classifier_for is not None:
                classifier = self.classifier_for(label_set).float()
            else:
                templates = family_templates(label_set.template, getattr(encoder, "family", "clip"))  # as Classify
                classifier = self.classifiers.get(encoder, list(label_set.labels), templates)
            fresh = compute(label_set, self.default_threshold, model, classifier, ids, features, progress)
            return replace(fresh, examples=examples)
        fresh = synced(stored, ids, features)
        wanted = thresholds_of(label_set, self.default_threshold)
        if not torch.equal(fresh.thresholds, wanted):
            fresh = replace(fresh, thresholds=wanted)
        return fresh

    def _examples_key(self, name: str) -> str:
        """The set's examples as canonical JSON ("" when it has none): tags blended with others are recomputed."""
        try:
            examples = self.label_sets.examples(name)
        except LabelSetError:
            return ""
        return json.dumps(examples, sort_keys=True) if examples else ""

    def tag(self, name: str, library: Library, encoder: TextEncoder, progress: Progress | None = None) -> SetTags:
        """Tag the library with a saved set (marks the set as tagged, so images added later are tagged too)."""
        label_set = self._label_set(name)
        if not label_set.tagged:
            label_set = self.label_sets.update(name, tagged=True)
        return self.current(name, library, encoder, progress, label_set=label_set)

    def current(self, name: str, library: Library, encoder: TextEncoder, progress: Progress | None = None, *,
                label_set: LabelSet | None = None, store: bool = True) -> SetTags:
        """The up-to-date tags of a set (saved when anything changed and `store`)."""
        label_set = label_set or self._label_set(name)
        model, ids, features = library.tag_rows()
        with self._lock:
            sets = self._load_or_empty()
            stored = sets.get(name)
            fresh = self._fresh(stored, label_set, model, ids, features, encoder, progress)
            if store and fresh is not stored:
                sets[name] = fresh
                self.file.save(sets)
        return fresh

    def sync(self, library: Library, encoder: TextEncoder) -> list[str]:
        """Bring every tagged set up to date (after images were added or removed); returns the names saved."""
        try:
            tagged = [s for s in self.label_sets.saved_sets() if s.tagged]
        except LabelSetError as exc:
            log.warning("tags not updated: %s", exc)
            return []
        model, ids, features = library.tag_rows()
        changed: list[str] = []
        with self._lock:
            sets = self._load_or_empty()
            for label_set in tagged:
                stored = sets.get(label_set.name)
                fresh = self._fresh(stored, label_set, model, ids, features, encoder)
                if fresh is not stored:
                    sets[label_set.name] = fresh
                    changed.append(label_set.name)
            if changed:
                self.file.save(sets)
        return changed

    def tagged_sets(self) -> list[str]:
        """Names of the saved sets the library is tagged with ([] when the label sets cannot be read)."""
        try:
            return [s.name for s in self.label_sets.saved_sets() if s.tagged]
        except LabelSetError:
            return []

    def sets_with_label(self, label: str, set_name: str | None = None) -> list[str]:
        """The tagged sets (or the one named) that have this label."""
        if set_name:
            label_set = self._label_set(set_name)
            if not label_set.tagged:
                raise UnknownTagError(f"the library is not tagged with the label set {set_name!r}: tag it first (the "
                                "Library tab's Tags panel, or `python -m clip_app.index tag NAME`)")
            return [set_name] if label in label_set.labels else []
        return [s.name for s in self.label_sets.saved_sets() if s.tagged and label in s.labels]

    def untag(self, name: str) -> None:
        """Forget a set's tags (the set stays); used when a set is deleted or renamed."""
        with self._lock:
            sets = self._load_or_empty()
            if name in sets:
                del sets[name]
                self.file.save(sets)

    # ---- check and repair -----------------------------------------------------------------------------------
    def check(self, model: str, ids: torch.Tensor) -> list[Problem]:
        """Problems of the tags file against the library (model, IDs [N]) and the tagged sets; changes nothing."""
        try:
            sets = self.file.load()
        except TagsError as exc:
            return [Problem("tags", None, self.file.name, str(exc))]
        if not self._sets_readable():  # the label sets file's own message says what is wrong with it
            return []
        tagged = {s.name: s for s in self.label_sets.saved_sets() if s.tagged}
        problems = []
        for name, label_set in tagged.items():
            stored = sets.get(name)
            if stored is None:
                why = "has no tags stored"
            elif stored.model != model:
                why = f"was tagged with another model ({stored.model}, the library's is {model})"
            elif stored.labels != tuple(label_set.labels) or stored.template != label_set.template:
                why = "changed its labels or template since it was tagged"
            elif not torch.equal(stored.ids, ids):
                why = "has tags of images added or removed since (updated on the next use)"
            else:
                continue
            problems.append(Problem("tags", None, self.file.name, f"the tags of label set {name!r} are out of date: "
                                    f"the set {why}; repair recomputes them"))
        for name in sorted(set(sets) - set(tagged)):
            problems.append(Problem("tags", None, self.file.name, f"the tags file holds tags of {name!r}, which is "
                                    "not a tagged label set; repair removes them"))
        return problems

    def repair(self, library: Library, encoder: TextEncoder) -> list[str]:
        """Rewrite the tags file from the library for every tagged set (a damaged file is replaced); actions."""
        if not self._sets_readable():
            return []
        try:
            before = self.file.load()
            damaged = None
        except TagsError as exc:
            before, damaged = {}, str(exc)
        if damaged is None and not self.check(*library.tag_rows()[:2]):
            return []
        tagged = [s for s in self.label_sets.saved_sets() if s.tagged]
        model, ids, features = library.tag_rows()
        with self._lock:
            sets = {s.name: self._fresh(before.get(s.name), s, model, ids, features, encoder) for s in tagged}
            self.file.save(sets)
        actions = [f"rebuilt the damaged tags file {self.file.name}"] if damaged else []
        actions += [f"recomputed the tags of label set {name!r}" for name in sets
                    if name not in before or sets[name] is not before[name]]
        actions += [f"removed the tags of {name!r} (not a tagged label set)" for name in before if name not in sets]
        return actions

    def _sets_readable(self) -> bool:
        try:
            self.label_sets.saved_sets()
            return True
        except LabelSetError as exc:
            log.warning("tags not checked: %s", exc)
            return False


def as_json(tags: SetTags) -> dict:
    """`{"set": NAME, "labels": {LABEL: {"threshold": T, "count": N, "ids": [...]}}}` (the CLI's `tag --json`)."""
    mask = tags.mask()
    return {"set": tags.name, "labels": {label: {"threshold": round(float(tags.thresholds[c]), 6),
                                                 "count": int(mask[:, c].sum()),
                                                 "ids": tags.ids[mask[:, c]].tolist()}
                                         for c, label in enumerate(tags.labels)}}


def parse_threshold_for(items: Sequence[str]) -> dict[str, str]:
    """['dog=0.3', 'a cat = 0.2'] -> {'dog': '0.3', 'a cat': '0.2'} (values checked by the label set store)."""
    out: dict[str, str] = {}
    for item in items:
        label, sep, value = str(item).rpartition("=")
        label = " ".join(label.split())
        if not sep or not label:
            raise ThresholdError(f"--threshold-for needs LABEL=T (e.g. dog=0.3), got {item!r}")
        out[label] = value.strip()
    return out
