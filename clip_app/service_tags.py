"""The App's tag actions (a mixin of service.App): tag the library with a label set, thresholds, the tags of a set,
the images carrying a tag, the live preview of a threshold, and keeping tags in step with adds and removes."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from .classify import LabelError, check_threshold
from .label_sets import LabelSetError, LabelSetStore
from .library import Entry, FeatureLibrary, LibraryError
from .library.tags import LibraryTags, SetTags, UnknownTagError

if TYPE_CHECKING:
    from .encoders import ClipEncoder

log = logging.getLogger("clip_app.service")

Progress = Callable[[int, int], None]


@dataclass
class TagPreview:
    """What a threshold would do to one label of a tagged set: the count, and the images just above and below."""

    set_name: str
    label: str
    threshold: float
    count: int
    above: list[tuple[Entry, float]]          # tagged at this threshold, lowest cosine first
    below: list[tuple[Entry, float]]          # not tagged, highest cosine first


class TagActions:
    """Tag actions over the App's encoder, library, label sets and tags (see service.App)."""

    encoder: "ClipEncoder"
    library: FeatureLibrary
    label_sets: LabelSetStore
    tags: LibraryTags

    def check_tags(self) -> list:
        """The tags file's problems (none when the library is of another model: check says so already)."""
        try:
            model, ids, _ = self.library.tag_rows()
        except LibraryError:
            return []
        return self.tags.check(model, ids)

    # ---- Tags ---------------------------------------------------------------------------------------------
    def tag_library(self, set_name: str, progress: Progress | None = None) -> SetTags:
        """Tag every image with the labels of a saved set (from stored features: one matrix product); images
        added later are tagged on add."""
        if not set_name:
            raise _input_error("pick a label set to tag the library with")
        return self.tags.tag(set_name, self.library, self.texts, progress)

    def set_tag_thresholds(self, set_name: str, threshold: float | str | None = None,
                           per_label: dict[str, float | str | None] | None = None) -> SetTags:
        """Store a set's thresholds (the whole set's and/or per label; all checked first) and re-tag with them."""
        if not set_name:
            raise _input_error("pick a label set first")
        if self.label_sets.is_builtin(set_name):
            self.tags._label_set(set_name)  # the read-only message
        changes: dict = {}
        if threshold is not None and threshold != "":
            changes["threshold"] = check_threshold(threshold)
        if per_label:
            changes["thresholds"] = {k: (None if v is None else check_threshold(v, f"threshold for {k!r}"))
                                     for k, v in per_label.items()}
        self.label_sets.update(set_name, **changes)
        return self.tag_library(set_name)

    def set_tags(self, set_name: str) -> SetTags:
        """The up-to-date tags of a tagged set."""
        return self.tags.current(set_name, self.library, self.texts)

    def tag_counts(self) -> list[tuple[str, str, int]]:
        """(set, label, images) for every label of every tagged set."""
        out = []
        for name in self.tags.tagged_sets():
            try:
                counts = self.set_tags(name).counts()
            except (LibraryError, LabelSetError, LabelError) as exc:  # left out, not an error for the page
                log.warning("tags of %r: %s", name, exc)
                continue
            out.extend((name, label, n) for label, n in counts.items())
        return out

    def tag_choices(self) -> list[tuple[str, int]]:
        """(label, images carrying it in any tagged set) for every label of the tagged sets, by label."""
        labels = sorted({label for _, label, _ in self.tag_counts()}, key=str.casefold)
        return [(label, len(self._tag_ids(label, None))) for label in labels]  # type: ignore[arg-type]

    def images_with_tag(self, tag: str, set_name: str | None = None) -> list[Entry]:
        """The images carrying a tag (of the named set, else of any tagged set), in ID order."""
        ids = self._tag_ids(tag, set_name)
        return self.library.entries(ids) if ids is not None else []

    def tag_preview(self, set_name: str, label: str, threshold: float | str, n: int = 6) -> TagPreview:
        """How many images a threshold would tag with one label, and the borderline images around it."""
        if not set_name or not label:
            raise _input_error("pick a label set and one of its labels")
        value = check_threshold(threshold)
        tags_now = self.tags.current(set_name, self.library, self.texts, store=False)
        above, below = tags_now.borderline(label, value, n)
        count = len(tags_now.ids_with(label, value))
        entries = lambda pairs: [(self.library.get(i), c) for i, c in pairs]  # noqa: E731
        return TagPreview(set_name, label, value, count, entries(above), entries(below))

    def _tag_ids(self, tag: str | None, set_name: str | None) -> torch.Tensor | None:
        """IDs [M] (ascending) carrying a tag, or None when no tag is given; UnknownTagError for an unknown one."""
        tag = " ".join((tag or "").split())
        if not tag:
            return None
        names = self.tags.sets_with_label(tag, set_name or None)
        if not names:
            where = f"the label set {set_name!r}" if set_name else "no tagged label set"
            raise UnknownTagError(f"{where} has no label {tag!r}" + ("" if set_name else
                                  f" (tagged sets: {', '.join(self.tags.tagged_sets()) or 'none'})"))
        parts = [self.tags.current(name, self.library, self.texts).ids_with(tag) for name in names]
        return torch.unique(torch.cat(parts)) if len(parts) > 1 else parts[0]

    def _sync_tags(self) -> None:
        """Tag images added (and forget images removed) for every tagged set; a failure is logged, not raised."""
        try:
            self.tags.sync(self.library, self.texts)
        except (LibraryError, LabelSetError, LabelError) as exc:
            log.warning("tags not updated (check reports it, repair fixes it): %s", exc)



def _input_error(message: str) -> Exception:
    from .service import InputError

    return InputError(message)
