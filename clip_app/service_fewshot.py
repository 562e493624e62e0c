"""The App's few-shot actions: example images per label of a label set, classify with the adapted head beside the
zero-shot one, and "more like these" searches (Rocchio). Mixed into clip_app.service.App."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch

from .adapt import METHODS, AdaptError, Examples, Head, adapt, rocchio
from .classify import LabelError, LabelScore, parse_labels, rank
from .images import decode_image
from .label_sets import SetExamples
from .library import UnknownImageError

if TYPE_CHECKING:  # the mixin's host
    from .service import App, SearchResult

log = logging.getLogger(__name__)

#: the head used by Classify when a set has examples: training-free, works when only some labels have examples
DEFAULT_METHOD = "tip"
MAX_REFINE_IDS = 200
HEAD_CACHE_SIZE = 16


@dataclass
class AdaptedResult:
    """Zero-shot and adapted answers for one photo against a label set with examples."""

    labels: list[str]
    zero_shot: list[LabelScore]                      # every label, best first
    adapted: list[LabelScore] | None                 # None when the set has no (usable) examples
    method: str
    params: dict[str, float] = field(default_factory=dict)
    n_examples: int = 0
    labels_with_examples: int = 0
    ignored: list[int] = field(default_factory=list)  # example IDs no longer in the library
    image_id: int | None = None                       # the photo's library ID when it is (or was just) stored


def _set_and_ids(name: str | None, image_ids: object) -> list[int]:
    """The image IDs of an examples request for set `name` (InputError without a set or with a bad ID)."""
    from .service import InputError

    if not name:
        raise InputError("pick a label set first")
    try:
        return _ids(image_ids)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _ids(value: object) -> list[int]:
    """Image IDs from an int, '12, 15 #7' text or a list; InputError-free parsing (ValueError on junk)."""
    if value is None or value == "":
        return []
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        items: list[object] = [value]
    elif isinstance(value, str):
        items = [p for p in value.replace(",", " ").split() if p]
    else:
        items = list(value)  # type: ignore[call-overload]
    out: list[int] = []
    for item in items:
        text = str(item).strip().lstrip("#")
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"not an image ID: {item!r}") from None
        if isinstance(item, bool) or not number.is_integer():
            raise ValueError(f"not an image ID: {item!r}")
        out.append(int(number))
    return list(dict.fromkeys(out))


class FewShotActions:
    """Example images per label, adapted classification and refined search (methods of App)."""

    _heads: OrderedDict
    _heads_lock: threading.Lock

    # ---- examples -----------------------------------------------------------------------------------------
    def label_examples(self: "App", name: str) -> SetExamples:
        """A label set's examples: label -> image IDs."""
        if not name:
            from .service import InputError
            raise InputError("pick a label set first")
        return self.label_sets.examples(name)

    def add_examples(self: "App", name: str, label: str, image_ids: object = None,
                     image: object = None) -> SetExamples:
        """Add library images (by ID) and/or an uploaded photo (added to the library first) as examples of one
        label of a saved set; every ID must be in the library. Returns the set's examples."""
        from .service import InputError

        ids = _set_and_ids(name, image_ids)
        if name in self.label_sets.builtin_names():
            raise InputError(f"{name!r} is built in and read-only: save its labels as a new set to give it examples")
        label = self.label_sets.label_of(name, label)  # an unknown set or label stops here, before any upload
        for image_id in ids:
            self.library.get(image_id)  # UnknownImageError names the ID
        if image is not None and image != "":
            data, filename = self._read(image)
            decode_image(data, filename, min_side=self.encoder.decode_min_side)  # a bad image stops here
            saved = self.library.add([(data, filename)]).results[0]
            if saved.id is None:
                raise InputError(f"the photo could not be added to the library: {saved.error or saved.status}")
            ids.append(int(saved.id))
        if not ids:
            raise InputError("no examples: give image IDs from the gallery or a search result, or upload a photo")
        return self.label_sets.add_examples(name, label, ids)

    def remove_examples(self: "App", name: str, label: str | None, image_ids: object) -> SetExamples:
        """Remove image IDs from the examples of one label (no label: of every label); the images stay in the
        library."""
        from .service import InputError

        ids = _set_and_ids(name, image_ids)
        if not ids:
            raise InputError("no image IDs to remove")
        return self.label_sets.remove_examples(name, label or None, ids)

    def examples_apply(self: "App", name: str | None, labels: str | Sequence[str] | None) -> bool:
        """True when the set has examples and `labels` (text or a list, as Classify takes them) are exactly its
        labels, ignoring case: then Classify can show the adapted answer too."""
        if not name or not self.label_sets.examples(name):
            return False
        try:
            given = parse_labels(labels if labels is not None else "")
        except LabelError:
            return False
        return [x.casefold() for x in given] == [x.casefold() for x in self.label_set(name)]

    # ---- classify with examples ---------------------------------------------------------------------------
    def classify_adapted(self: "App", image: object = None, name: str = "", template: str = "single", *,
                         image_id: object = None, method: str = DEFAULT_METHOD, save: bool = False) -> AdaptedResult:
        """Zero-shot and adapted (few-shot head over the set's examples) answers for a photo (upload) or a library
        image (image_id). The adapted answer is None when the set has no usable examples."""
        from .service import InputError

        if not name:
            raise InputError("pick a label set first")
        if method not in METHODS[1:]:
            raise InputError(f"unknown method {method!r}: choose from {', '.join(METHODS[1:])}")
        labels = self.label_set(name)
        templates = self._templates(template)
        examples = self.label_sets.examples(name)
        stored_id: int | None = None
        if image_id not in (None, ""):
            stored_id = self._id(image_id)
            feature = self._rows([stored_id])[0]  # UnknownImageError names a missing ID
        else:
            data, filename = self._read(image)
            picture = decode_image(data, filename, min_side=self.encoder.decode_min_side)
            feature = None
            if save:
                saved = self.library.add([(data, filename)]).results[0]
                stored_id, feature = saved.id, saved.feature
            if feature is None:
                feature = self.encoder.encode_images([picture])[0]
        per_label = self._label_templates(labels, template, templates)  # Chinese labels: Chinese templates
        weights = self.classifiers.get(self.texts, labels, per_label)  # [D, C], each label read by its text tower
        result = AdaptedResult(labels, rank(labels, feature, weights), None, method, image_id=stored_id)
        found, result.ignored = self._example_features(labels, examples)
        if found is None:
            return result
        head = self._head(method, labels, templates, weights, found)
        logits = head.logits(feature.reshape(1, -1).float())  # [1, C]
        probs = logits.softmax(dim=-1)[0]
        cos = (feature.float() @ weights.float())
        order = sorted(range(len(labels)), key=lambda i: (-float(probs[i]), i))
        result.adapted = [LabelScore(labels[i], float(probs[i]), float(cos[i])) for i in order]
        result.params = dict(head.params)
        result.n_examples = len(found[1])
        result.labels_with_examples = len(set(found[1].tolist()))
        return result

    def _example_features(self: "App", labels: Sequence[str], examples: SetExamples
                          ) -> tuple[tuple[torch.Tensor, torch.Tensor, tuple[int, ...]] | None, list[int]]:
        """((features [M, D], label indices [M], their image IDs) of the examples still in the library, or None;
        the ignored IDs). An ID's features never change in a library (one model), so the IDs key the head."""
        pairs = [(labels.index(label), int(i)) for label, ids in examples.items() if label in labels for i in ids]
        if not pairs:
            return None, []
        ids, features = self.library.snapshot()  # sorted IDs [N], rows [N, D]
        wanted = torch.tensor([i for _, i in pairs], dtype=torch.int64)
        at = torch.searchsorted(ids, wanted).clamp_max(max(len(ids) - 1, 0))
        present = (ids[at] == wanted) if len(ids) else torch.zeros(len(wanted), dtype=torch.bool)
        ignored = [int(i) for i, ok in zip(wanted.tolist(), present.tolist()) if not ok]
        if not bool(present.any()):
            return None, ignored
        label_idx = torch.tensor([c for c, _ in pairs], dtype=torch.long)[present]
        return (features[at[present]].float(), label_idx, tuple(wanted[present].tolist())), ignored

    def _head(self: "App", method: str, labels: Sequence[str], templates: Sequence[str], weights: torch.Tensor,
              found: tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]) -> Head:
        """The fitted head for these examples (a small LRU: the same set and examples are fitted once)."""
        key = (method, tuple(labels), tuple(templates), tuple(found[1].tolist()), found[2])
        with self._heads_lock:
            if key in self._heads:
                self._heads.move_to_end(key)
                return self._heads[key]
        try:
            head = adapt(method, weights, Examples(found[0], found[1], len(labels)))
        except AdaptError as exc:
            from .service import InputError
            raise InputError(str(exc)) from None
        with self._heads_lock:
            self._heads[key] = head
            while len(self._heads) > HEAD_CACHE_SIZE:
                self._heads.popitem(last=False)
        return head

    # ---- more like these ----------------------------------------------------------------------------------
    def search_refine(self: "App", query: str = "", positive_ids: object = None, negative_ids: object = None,
                      k: int | None = None, min_score: float | None = None) -> "SearchResult":
        """Search with a text query (optional) moved toward positive example images and away from negative ones
        (Rocchio: normalise(q + 0.75 mean(positives) - 0.15 mean(negatives)))."""
        from .service import DEFAULT_K, MAX_QUERY_CHARS, InputError, english_note

        try:
            positives, negatives = _ids(positive_ids), _ids(negative_ids)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        if not positives:
            raise InputError("no positive examples: pick one or more results that look like what you want")
        if len(positives) + len(negatives) > MAX_REFINE_IDS:
            raise InputError(f"at most {MAX_REFINE_IDS} example images")
        query = " ".join((query or "").split())
        if len(query) > MAX_QUERY_CHARS:
            raise InputError(f"the query is too long ({len(query)} characters, at most {MAX_QUERY_CHARS})")
        k = self._k(DEFAULT_K if k in (None, "") else k)
        text = self.texts.encode_texts([query])[0] if query else None  # routed, like search_text
        refined = rocchio(text, self._rows(positives), self._rows(negatives) if negatives else None)
        result = self._search(refined, k, min_score)
        result.note = english_note(query) if query and self.text_encoder is None else None
        return result

    def _rows(self: "App", image_ids: Sequence[int]) -> torch.Tensor:
        """Library features [K, D] of these IDs, from one snapshot (UnknownImageError names a missing one)."""
        ids, features = self.library.snapshot()  # sorted IDs [N], rows [N, D]
        wanted = torch.tensor(list(image_ids), dtype=torch.int64)
        at = torch.searchsorted(ids, wanted).clamp_max(max(len(ids) - 1, 0))
        for image_id, row in zip(wanted.tolist(), at.tolist()):
            if not len(ids) or int(ids[row]) != image_id:
                raise UnknownImageError(f"no image with ID {image_id} in the library")
        return features[at].float()
