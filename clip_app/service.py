"""The App: one loaded encoder, one feature library and the label sets; one method per user action.

The UI (ui.py) and any other front end call these methods; every bad input raises a typed error (see USER_ERRORS)
before anything is changed.
"""

from __future__ import annotations

import logging
import math
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, Union

import torch
from PIL import Image

from .classify import (
    DEFAULT_TAG_THRESHOLD,
    LOGIT_SCALE,
    ClassifierCache,
    LabelError,
    LabelScore,
    check_threshold,
    none_of_these,
    parse_labels,
    rank,
    tags,
)
from .config import (
    DEFAULT_MAX_FILE_SIZE,
    DEFAULT_MAX_LABELS,
    DEFAULT_MAX_PROMPTS,
    DEFAULT_MAX_REQUEST_SIZE,
    Settings,
    parse_size,
)
from .encoders import ClipEncoder, RoutedTextEncoder, TextModelMismatch, routed_text_encoder
from .images import ImageError, decode_image
from .label_heads import LabelHead
from .label_sets import LabelSet, LabelSetError, LabelSetStore
from .library import (
    AddReport,
    AddResult,
    CheckReport,
    Entry,
    FeatureLibrary,
    LibraryError,
    RebuildReport,
    RepairReport,
    private_paths,
)
from .library.pg_store import label_set_store, tag_file
from .library.tags import LibraryTags, SetTags
from .library.tags import as_json as tags_json
from .prompts import NEUTRAL_LABEL, NEUTRAL_PROMPTS, TEMPLATE_CHOICES, chinese_templates_for, family_templates
from .request_limits import BodyLimit
from .search import Confidence, ConfidenceRule, confidence, percentiles
from .served_copies import forget_on_delete
from .service_fewshot import DEFAULT_METHOD, AdaptedResult, FewShotActions
from .service_tags import TagActions, TagPreview
from .text_routing import FOREIGN_WORDS, MULTILINGUAL_TOWER, has_letters, is_chinese
from .thumbnails import Thumbnails, thumbs_dir

log = logging.getLogger(__name__)

PER_PAGE = 48
MAX_K = 50
DEFAULT_K = 12
MAX_QUERY_CHARS = 1000

#: An image as the front ends hand it over: a file path (Gradio's upload cache) or raw bytes.
ImageInput = Union[str, Path, bytes, None]
Progress = Callable[[int, int], None]
#: called with an entry and its files (image, thumbnail) before they are deleted; returns what to run after
DeleteListener = Callable[[Entry, list[Path]], Callable[[], None]]


class AppError(Exception):
    """Base of the errors the App raises for a request it cannot serve; the message is for the user."""


class InputError(AppError, ValueError):
    """Missing or malformed input (no image, empty query, bad number, bad template)."""


class FileTooLargeError(InputError):
    """A file over the size limit (--max-file-size)."""


#: Every error that means "the user's request cannot be served as given"; front ends show the message.
USER_ERRORS: tuple[type[Exception], ...] = (AppError, ImageError, LabelError, LabelSetError, LibraryError)


@dataclass(frozen=True)
class Hit:
    entry: Entry
    score: float
    thumbnail: Path | None = None             # what to show (None: thumbnails off, or the entry cannot be shown)
    problem: str | None = None                # why the entry cannot be shown (a folder, a link out of the gallery)
    percentile: float | None = None           # share of the gallery scoring at most this image for the query (0-100)


@dataclass
class ClassifyResult:
    labels: list[str]
    templates: tuple[str, ...]
    scores: list[LabelScore]                  # every label, best probability first
    tags: list[LabelScore] | None = None      # tag mode: labels with cosine >= threshold (None when off)
    threshold: float | None = None
    saved: AddResult | None = None            # the gallery outcome when saving was asked for
    none_of_these: bool | None = None         # opt-in: the neutral prompts beat every label (None when not asked)
    neutral_cosine: float | None = None       # the image's cosine with the neutral prompts (when asked)
    towers: dict[str, str] | None = None      # label -> the text tower that read it (with a multilingual tower)


@dataclass
class SearchResult:
    hits: list[Hit]                           # shown matches, best first
    hidden: int = 0                           # matches under the minimum score
    library_size: int = 0
    min_score: float | None = None
    note: str | None = None                   # e.g. the non-English query note
    confident: bool = False                   # see search.confidence: distinctive and above the neutral prompts
    reason: str = ""                          # why (not) confident
    tag: str | None = None                    # the tag the search was limited to
    tower: str | None = None                  # the text tower that read the query (with a multilingual tower)


@dataclass
class GalleryPage:
    entries: list[Entry]
    page: int
    pages: int
    total: int
    per_page: int = PER_PAGE
    thumbnails: list[Path | None] = field(default_factory=list)  # per entry: what to show
    problems: dict[int, str] = field(default_factory=dict)       # ID -> why that entry cannot be shown


@dataclass
class LibraryStats:
    count: int
    model: str
    dim: int
    file_size: int
    gallery_dir: str
    library_file: str
    extra: dict = field(default_factory=dict)


def format_size(size: int) -> str:
    """A byte count for people: '512 B', '12.3 KB', '4.0 MB'."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"  # pragma: no cover


_FOREIGN_WORDS = FOREIGN_WORDS
#: the defined answer to a query without any letter (emoji, punctuation, digits only)
SYMBOLS_NOTE = ("This query has no words, only symbols: CLIP's text tower reads them as they are, so the results "
                "may be weak. Describe what you are looking for in words.")


def english_note(query: str) -> str | None:
    """A note when a query looks non-English (letters of a non-Latin script, or common foreign words), else None."""
    letters = [ch for ch in query if ch.isalpha()]
    if any(not unicodedata.name(ch, "").startswith("LATIN") for ch in letters):
        foreign = True
    else:
        words = {w.strip(".,;:!?'\"()").casefold() for w in query.split()}
        foreign = len(words & _FOREIGN_WORDS) >= 1 and len(words) >= 2
    if not foreign:
        return None
    return ("This query does not look like English. CLIP was trained on English captions, so results for other "
            "languages are usually weak: try the query in English.")


def clean_query(text: str | None) -> str:
    """A query without control and invisible format characters (NUL, zero-width spaces and joiners, BOM), its
    whitespace collapsed: a query of only such characters is empty."""
    kept = "".join(ch for ch in (text or "") if unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn")
                   or ch in "\t\n\r")
    return " ".join(kept.split())


def label_templates(routed: RoutedTextEncoder | None, labels: Sequence[str], choice: str | None,
                    templates: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Each label's templates: a Chinese label read by the multilingual tower of `routed` gets the Chinese templates
    of a named choice ('single', 'ensemble'); every other label (and any custom template) the chosen ones."""
    chinese = chinese_templates_for((choice or "single").strip())
    return [chinese if chinese and routed is not None and is_chinese(label)
            and routed.tower_for(chinese[0].replace("{}", label, 1)) == MULTILINGUAL_TOWER else templates
            for label in labels]


class App(TagActions, FewShotActions):
    """clip-app's actions over one encoder and one library; safe to share between threads (Gradio's workers).
    The few-shot actions (examples per label, classify_adapted, search_refine) come from service_fewshot, the
    tag actions (tag the library, tag filters, thresholds) from service_tags."""

    def __init__(self, encoder: ClipEncoder, library: FeatureLibrary, label_sets: LabelSetStore | None = None,
                 max_file_size: int = DEFAULT_MAX_FILE_SIZE, *, max_labels: int = DEFAULT_MAX_LABELS,
                 max_prompts: int = DEFAULT_MAX_PROMPTS, thumbnails: bool = True,
                 tag_threshold: float = DEFAULT_TAG_THRESHOLD, confidence_rule: ConfidenceRule | None = None,
                 text_encoder: RoutedTextEncoder | None = None) -> None:
        self.encoder = encoder
        #: CLIP's own text tower plus a multilingual one, routed per text (None: CLIP's own text tower only)
        self.text_encoder = text_encoder
        self.library = library
        library_file = Path(library.stats()["library_file"])
        self.label_sets = label_sets or label_set_store(library, library_file)
        self.max_file_size = int(max_file_size)
        self.max_labels = int(max_labels)
        self.max_prompts = int(max_prompts)
        #: gallery pages and search results show thumbnails (False: the full files, as before; for benchmarks)
        self.thumbnails = Thumbnails(library.gallery_dir) if thumbnails else None
        self.delete_listeners: list[DeleteListener] = []
        self.classifiers = ClassifierCache()
        self.tags = LibraryTags(tag_file(library, library_file), self.label_sets, self.classifiers,
                                check_threshold(tag_threshold, "default tag threshold"), self._tag_classifier)
        self.confidence_rule = confidence_rule or ConfidenceRule()
        self._heads: OrderedDict = OrderedDict()  # few-shot heads by (method, labels, templates, examples)
        self._heads_lock = threading.Lock()
        # no App-level write lock: the library serialises its saves (threads and processes) and checks for
        # duplicates again under its own lock, while it encodes outside any lock, so a photo saved from Classify
        # or a delete does not wait for a bulk upload to be encoded

    @classmethod
    def from_settings(cls, settings: Settings, max_file_size: int = DEFAULT_MAX_FILE_SIZE) -> "App":
        """Load the model and the library once (ModelLoadError / LibraryError when they cannot be used)."""
        encoder = ClipEncoder(settings.model, **settings.encoder_options())  # type: ignore[arg-type]
        text_encoder = routed_text_encoder(encoder, settings.text_model, settings.text_routing, encoder.device,
                                           str(settings.model_dir) if settings.model_dir else None)
        library = FeatureLibrary(settings.gallery_dir, settings.library_file, encoder)
        app = cls(encoder, library, label_set_store(library, settings.library_file), max_file_size,
                  max_labels=settings.max_labels, max_prompts=settings.max_prompts,
                  tag_threshold=settings.tag_threshold, confidence_rule=settings.confidence_rule(),
                  text_encoder=text_encoder)
        log.info("clip-app ready: model %s on %s, backend %s, %d images in %s (library %s)%s", encoder.name,
                 encoder.device, encoder.backend_name, len(library), settings.gallery_dir, settings.library_file,
                 f"; text model {text_encoder.multilingual.name} ({text_encoder.routing} routing)"
                 if text_encoder else "")
        return app

    @property
    def texts(self) -> ClipEncoder | RoutedTextEncoder:
        """The encoder of every text (queries, labels, templates): the routed pair, or CLIP's own text tower."""
        return self.text_encoder or self.encoder

    def text_tower(self, text: str) -> str:
        """The readable name of the tower that reads this text: 'CLIP ViT-B/32' or the multilingual model."""
        if self.text_encoder is None:
            return f"CLIP {self.encoder.name}"
        return self.text_encoder.tower_name(self.text_encoder.tower_for(text))

    def accepted_languages(self) -> str:
        """What the query box accepts: 'English', or English plus the multilingual model's languages."""
        if self.text_encoder is None:
            return "English"
        return f"English, {getattr(self.text_encoder.multilingual, 'languages', 'other languages')}"

    # ---- Classify -----------------------------------------------------------------------------------------
    def classify(self, image: ImageInput, labels: str | Sequence[str], template: str = "single", *,
                 save: bool = True, tag_threshold: float | None = None,
                 allow_none: bool = False) -> ClassifyResult:
        """Zero-shot classify one photo against labels; optionally save it to the gallery (known photos keep
        their ID). allow_none: answer "none of these" when the neutral prompts beat every label. Every input is
        checked before anything is stored."""
        threshold = self._score(tag_threshold, "tag threshold")
        data, name = self._read(image)
        label_list = parse_labels(labels if labels is not None else "")
        templates = self._templates(template)
        self._check_work(label_list, templates)
        per_label = self._label_templates(label_list, template, templates)
        feature: torch.Tensor | None = None
        saved: AddResult | None = None
        if save:  # the library decodes and encodes the photo once (or knows it) and returns its stored row
            saved = self.library.add([(data, name)]).results[0]
            if saved.status == "failed":  # a bad image: nothing was stored; raise its ImageError
                decode_image(data, name, min_side=self.encoder.decode_min_side)
                raise ImageError(name, saved.error or "cannot be read")
            feature = saved.feature
            if saved.status == "added":
                self._make_thumbnails([saved.id])
        if feature is None:  # JPEGs decode at a reduced scale: see ClipEncoder
            picture = decode_image(data, name, min_side=self.encoder.decode_min_side)
            feature = self.encoder.encode_images([picture])[0]  # [D]
        trained = self._trained_head(label_list)
        if trained is not None:  # a fine-tuned label set's own head (clip_app.finetune classify) for this model
            scores = trained.rank(label_list, feature)
        else:
            weights = self.classifiers.get(self.texts, label_list, per_label)  # [D, C]
            scores = rank(label_list, feature, weights)
        result = ClassifyResult(label_list, templates, scores, saved=saved)
        if self.text_encoder is not None and trained is None:  # a trained head reads no text
            result.towers = {label: self.text_tower(own[0].replace("{}", label, 1))
                             for label, own in zip(label_list, per_label)}
        if tag_threshold is not None:
            result.threshold = threshold
            result.tags = tags(scores, result.threshold)
        if allow_none:
            result.neutral_cosine = float(feature.float() @ self.neutral_direction())
            result.none_of_these = none_of_these(torch.tensor([s.cosine for s in scores]), result.neutral_cosine)
        if saved is not None and saved.status == "added":
            self._sync_tags()
        return result

    def neutral_direction(self) -> torch.Tensor:
        """The neutral prompts' direction [D] for the running model (encoded once, then cached)."""
        return self.classifiers.get(self.texts, [NEUTRAL_LABEL], NEUTRAL_PROMPTS)[:, 0]

    def _tag_classifier(self, label_set: LabelSet) -> torch.Tensor:
        """A set's tag classifier [D, C], built as Classify builds it (each label read by its text tower, Chinese
        templates for Chinese labels); a set with examples in the library gets the few-shot prototype blend of
        its columns (adapt.prototype_head: unit columns, so the thresholds stay cosines)."""
        labels = list(label_set.labels)
        templates = self._templates(label_set.template)
        weights = self.classifiers.get(self.texts, labels, self._label_templates(labels, label_set.template,
                                                                                 templates))  # [D, C]
        try:
            examples = self.label_sets.examples(label_set.name)
        except LabelSetError:
            return weights
        found, _ = self._example_features(labels, examples)
        if found is None:
            return weights
        try:
            head = self._head("prototype", labels, templates, weights, found)
        except InputError as exc:  # examples that cannot be used: zero-shot tags
            log.warning("label set %r: tags use the zero-shot classifier (%s)", label_set.name, exc)
            return weights
        return head.weight.float() / LOGIT_SCALE

    def _label_templates(self, labels: Sequence[str], choice: str | None,
                         templates: tuple[str, ...]) -> list[tuple[str, ...]]:
        """Each label's templates: a Chinese label read by the multilingual tower gets the Chinese templates of a
        named choice ('single', 'ensemble'); every other label (and any custom template) the chosen ones."""
        return label_templates(self.text_encoder, labels, choice, templates)

    def _trained_head(self, labels: Sequence[str]) -> LabelHead | None:
        """The head of a saved label set with exactly these labels, trained for the running model; else None
        (also when the label sets file cannot be read: zero-shot still works)."""
        try:
            found = self.label_sets.find_head(labels, self.encoder.identity)
        except LabelSetError as exc:
            log.warning("%s", exc)
            return None
        return None if found is None else found[1]

    # ---- Label sets ---------------------------------------------------------------------------------------
    def label_set_names(self) -> list[str]:
        """Names of the built-in and saved label sets (LabelSetError when the saved sets cannot be read)."""
        return self.label_sets.names()

    def label_set_choices(self) -> tuple[list[str], str | None]:
        """(the label set names to offer, a message or None): when the saved sets cannot be read, only the built-in
        sets and the reason."""
        try:
            return self.label_sets.names(), None
        except LabelSetError as exc:
            log.warning("%s", exc)
            return self.label_sets.builtin_names(), str(exc)

    def label_set(self, name: str) -> list[str]:
        """The labels of one set."""
        if not name:
            raise InputError("pick a label set first")
        return self.label_sets.get(name)

    def save_label_set(self, name: str, labels: str | Sequence[str], template: str | None = None) -> list[str]:
        """Save the labels under a name (replacing a saved set of that name); at most max_labels labels, as a
        classify request may use."""
        try:
            parsed = parse_labels(labels if labels is not None else "")
        except LabelError:
            parsed = []  # the store says what is wrong, after checking the name
        if len(parsed) > self.max_labels:
            raise InputError(f"too many labels: {len(parsed)}, at most {self.max_labels} in one set "
                             "(--max-labels / CLIP_APP_MAX_LABELS); nothing was saved")
        cleaned = self.label_sets.save(name, labels if labels is not None else "", template)
        self._sync_tags()  # a tagged set is re-tagged
        return cleaned

    def rename_label_set(self, old: str, new: str) -> None:
        """Rename a saved set (a tagged one keeps being tagged, under its new name)."""
        if not old:
            raise InputError("pick the label set to rename first")
        self.label_sets.rename(old, new)
        self.tags.untag(old)
        self._sync_tags()

    def delete_label_set(self, name: str) -> None:
        """Delete a saved set (and its tags)."""
        if not name:
            raise InputError("pick the label set to delete first")
        self.label_sets.delete(name)
        self.tags.untag(name)

    # ---- Search -------------------------------------------------------------------------------------------
    def search_text(self, query: str, k: int = DEFAULT_K, min_score: float | None = None, tag: str | None = None,
                    set_name: str | None = None) -> SearchResult:
        """The k gallery images closest to a text query (those under min_score are left out and counted), with
        percentiles and the confidence verdict; tag limits the results to images carrying that tag."""
        query = clean_query(query)
        if not query:
            raise InputError("empty query: describe what you are looking for, e.g. 'a dog on a beach'")
        if len(query) > MAX_QUERY_CHARS:
            raise InputError(f"the query is too long ({len(query)} characters, at most {MAX_QUERY_CHARS})")
        k = self._k(k)
        min_score = self._score(min_score, "minimum score")
        only = self._tag_ids(tag, set_name)
        feature = self.texts.encode_texts([query])[0]  # [D]
        result = self._search(feature, k, min_score, only, text=True)
        result.tag = tag or None
        result.tower = self.text_tower(query) if self.text_encoder is not None else None
        if not has_letters(query) and not any(ch.isdigit() for ch in query):
            result.note = SYMBOLS_NOTE
        elif self.text_encoder is None:
            result.note = english_note(query)
        return result

    def search_image(self, image: ImageInput, k: int = DEFAULT_K, min_score: float | None = None,
                     tag: str | None = None, set_name: str | None = None) -> SearchResult:
        """The k gallery images closest to an example image (the example is not stored)."""
        k = self._k(k)
        min_score = self._score(min_score, "minimum score")
        data, name = self._read(image)
        only = self._tag_ids(tag, set_name)
        feature = self.encoder.encode_images([decode_image(data, name, min_side=self.encoder.decode_min_side)])[0]
        result = self._search(feature, k, min_score, only, text=False)
        result.tag = tag or None
        return result

    def _search(self, feature: torch.Tensor, k: int, min_score: float | None, only: torch.Tensor | None = None,
                text: bool = True) -> SearchResult:
        found, scanned, best_rows = self.library.search_scan(feature, k, only)
        hits = [self._hit(entry, score, p) for (entry, score), p in zip(found, percentiles(scanned))]
        neutral = float(best_rows[0].float() @ self.neutral_direction()) if text and len(hits) else None
        verdict: Confidence = confidence(scanned.every, hits[0].score if hits else None, neutral,
                                         self.confidence_rule)
        if only is not None and not hits:
            verdict = Confidence(False, "no image carries this tag", None, None)
        shown = hits if min_score is None else [h for h in hits if h.score >= float(min_score)]
        return SearchResult(shown, hidden=len(hits) - len(shown), library_size=int(scanned.every.shape[0]),
                            min_score=None if min_score is None else float(min_score), confident=verdict.confident,
                            reason=verdict.reason)

    def _hit(self, entry: Entry, score: float, percentile: float | None = None) -> Hit:
        thumbnail, problem = self.shown_file(entry)
        return Hit(entry, score, thumbnail, problem, percentile)

    # ---- Gallery ------------------------------------------------------------------------------------------
    def gallery_page(self, page: int | float | None = 1, per_page: int = PER_PAGE, tag: str | None = None,
                     set_name: str | None = None) -> GalleryPage:
        """One page of the library in ID order (only images carrying `tag` when given); a page past either end
        shows the first or last page."""
        number = self._integer(page if page not in (None, "") else 1, "page number")
        only = self._tag_ids(tag, set_name)
        total = len(self.library) if only is None else len(only)
        pages = max(1, -(-total // per_page))
        number = min(max(1, number), pages)
        entries = (self.library.page(number, per_page) if only is None
                   else self.library.entries(only[(number - 1) * per_page:number * per_page]))
        result = GalleryPage(entries, number, pages, total, per_page)
        for entry in result.entries:
            shown, problem = self.shown_file(entry)
            result.thumbnails.append(shown)
            if problem:
                result.problems[entry.id] = problem
        return result

    def shown_file(self, entry: Entry) -> tuple[Path | None, str | None]:
        """(the file to show for an entry, None) or (None, why it cannot be shown): its thumbnail (made on first
        view), or with thumbnails off the gallery file itself."""
        if self.thumbnails is None:
            return entry.path, None
        try:
            return self.thumbnails.ensure(entry.sha256, entry.path, entry.file), None
        except (ImageError, OSError) as exc:
            reason = exc.reason if isinstance(exc, ImageError) else (exc.strerror or str(exc))
            log.warning("gallery entry #%d (%s) cannot be shown: %s", entry.id, entry.file, reason)
            return None, reason

    def _make_thumbnails(self, ids: Sequence[int | None]) -> None:
        """Make the thumbnails of newly added images (a failure only means it is made on first view)."""
        if self.thumbnails is None:
            return
        for image_id in ids:
            if image_id is not None:
                try:
                    entry = self.library.get(image_id)
                    self.thumbnails.ensure(entry.sha256, entry.path, entry.file)
                except (AppError, ImageError, LibraryError, OSError) as exc:
                    log.warning("no thumbnail for #%s yet: %s", image_id, exc)

    def image_info(self, image_id: int | float | str | None) -> Entry:
        """The library entry of one image (UnknownImageError when there is none)."""
        return self.library.get(self._id(image_id))

    def delete_image(self, image_id: int | float | str | None) -> Entry:
        """Remove one image (its feature row, then its gallery file); returns what was removed."""
        image_id = self._id(image_id)
        entry = self.library.get(image_id)
        files = [entry.path] + ([self.thumbnails.path_of(entry.sha256)] if self.thumbnails else [])
        after = [listener(entry, files) for listener in self.delete_listeners]  # e.g. find the served copies
        self.library.remove([image_id])  # UnknownImageError when another request removed it meanwhile
        if self.thumbnails is not None:
            self.thumbnails.remove(entry.sha256)
        for step in after:
            step()
        self.label_sets.forget_images([image_id])  # its examples disappear with it
        log.info("deleted image #%d (%s)", entry.id, entry.file)
        self._sync_tags()
        return entry

    # ---- Library ------------------------------------------------------------------------------------------
    def add_images(self, files: Sequence[str | Path] | None, progress: Progress | None = None) -> AddReport:
        """Add image files to the library (duplicates keep their ID; unreadable files are reported, not added).
        A file over the size limit stops the whole request before anything is added."""
        paths = [Path(f) for f in (files or []) if f]
        if not paths:
            raise InputError("no files: choose one or more images to add")
        for path in paths:
            self._check_size(path.stat().st_size if path.exists() else 0, path.name)
        report = self.library.add(paths, progress=progress)
        self._make_thumbnails([r.id for r in report.added])
        for path, result in zip(paths, report.results):  # results come in input order: show file names only
            if result.error and str(path) in result.error:
                result.error = result.error.replace(str(path), path.name)
            result.name = path.name
        log.info("add: %s", report.summary())
        if report.added:
            self._sync_tags()
        return report

    def stats(self) -> LibraryStats:
        """Count, model, feature size and file size of the library."""
        raw = dict(self.library.stats())
        known = {k: raw.pop(k) for k in ("count", "model", "dim", "file_size", "gallery_dir", "library_file")}
        if self.text_encoder is not None:
            raw["text_model"] = self.text_encoder.multilingual.name
            raw["text_routing"] = self.text_encoder.routing
        return LibraryStats(int(known["count"]), str(known["model"]), int(known["dim"]), int(known["file_size"]),
                            str(known["gallery_dir"]), str(known["library_file"]), raw)

    def check(self, progress: Progress | None = None) -> CheckReport:
        """Look for disagreements between the library file and the gallery folder (changes nothing); progress(rows
        checked, rows); the tags file's problems too."""
        report = self.library.check(progress=progress)
        report.problems.extend(self.check_tags())
        return report

    def repair(self, progress: Progress | None = None) -> RepairReport:
        """Fix what check finds; progress(files read, files). Thumbnails: those no image owns are removed, missing
        ones are made."""
        report = self.library.repair(progress=progress)
        if self.thumbnails is not None:
            entries = list(self.library)
            removed = self.thumbnails.prune(e.sha256 for e in entries)
            if removed:
                report.actions.append(f"removed {len(removed)} thumbnails of images no longer in the library")
            self._make_thumbnails([e.id for e in entries])
        report.actions.extend(self.tags.repair(self.library, self.texts))
        return report

    def rebuild(self, progress: Progress | None = None) -> RebuildReport:
        """Re-encode every gallery image with the running model."""
        return self.library.rebuild(progress=progress)

    # ---- input checks -------------------------------------------------------------------------------------
    def _read(self, image: ImageInput) -> tuple[bytes, str]:
        if image is None or image == "":
            raise InputError("no image: upload a photo first")
        if isinstance(image, Image.Image):
            raise InputError("pass the image as a file path or bytes")
        if isinstance(image, (bytes, bytearray)):
            data, name = bytes(image), "uploaded image"
        else:
            path = Path(image)
            name = path.name
            try:
                size = path.stat().st_size
            except OSError:
                raise ImageError(name, "file not found") from None
            self._check_size(size, name)
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ImageError(name, f"cannot be read ({exc.strerror or exc})") from None
        self._check_size(len(data), name)
        return data, name

    def _check_work(self, labels: Sequence[str], templates: Sequence[str]) -> None:
        """The caps on one classify request: labels, and prompts (labels x templates) of its classifier."""
        if len(labels) > self.max_labels:
            raise InputError(f"too many labels: {len(labels)}, at most {self.max_labels} in one request "
                             "(--max-labels / CLIP_APP_MAX_LABELS); nothing was changed")
        prompts = len(labels) * len(templates)
        if prompts > self.max_prompts:
            raise InputError(f"too much work: {len(labels)} labels x {len(templates)} templates = {prompts:,} "
                             f"prompts, at most {self.max_prompts:,} (--max-prompts / CLIP_APP_MAX_PROMPTS): use "
                             "fewer labels or the single template; nothing was changed")

    def _check_size(self, size: int, name: str) -> None:
        if size > self.max_file_size:
            raise FileTooLargeError(f"{name}: {format_size(size)} is over the size limit of "
                                    f"{format_size(self.max_file_size)}; nothing was changed")

    def _templates(self, template: str | None) -> tuple[str, ...]:
        try:
            return family_templates((template or "single").strip(), self.encoder.family)
        except ValueError as exc:
            raise InputError(str(exc)) from None

    @staticmethod
    def _integer(value: object, what: str) -> int:
        """A whole number from an int, a float with no fraction or such a text ('7', '#7', '7.0'); NaN, infinities,
        fractions (6.6 is not rounded to 7), booleans and anything else are an InputError."""
        if isinstance(value, bool):
            raise InputError(f"the {what} must be a whole number, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            number = float(str(value).strip().lstrip("#"))
        except (ValueError, OverflowError):
            raise InputError(f"the {what} must be a whole number, got {value!r}") from None
        if not math.isfinite(number) or not number.is_integer():
            raise InputError(f"the {what} must be a whole number, got {value!r}")
        return int(number)

    @staticmethod
    def _score(value: object, what: str) -> float | None:
        """A cosine threshold in [-1, 1], or None when not given; NaN, infinities and text are an InputError."""
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            raise InputError(f"the {what} must be a number between -1 and 1, got {value!r}")
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise InputError(f"the {what} must be a number between -1 and 1, got {value!r}") from None
        if not math.isfinite(number) or not -1.0 <= number <= 1.0:
            raise InputError(f"the {what} must be a number between -1 and 1 (a cosine), got {value!r}")
        return number

    def _id(self, image_id: object) -> int:
        if image_id is None or image_id == "":
            raise InputError("no image ID: pick an image first")
        return self._integer(image_id, "image ID")

    def _k(self, k: object) -> int:
        k = self._integer(DEFAULT_K if k in (None, "") else k, "number of results")
        if not 1 <= k <= MAX_K:
            raise InputError(f"the number of results must be between 1 and {MAX_K}, got {k}")
        return k


__all__ = ["App", "AdaptedResult", "DEFAULT_METHOD", "AppError", "InputError", "FileTooLargeError", "USER_ERRORS",
           "ClassifyResult", "SearchResult",
           "GalleryPage", "LibraryStats", "Hit", "clean_query", "thumbs_dir", "BodyLimit", "forget_on_delete",
           "DEFAULT_MAX_REQUEST_SIZE", "english_note", "parse_size", "format_size",
           "DEFAULT_TAG_THRESHOLD", "DEFAULT_K", "MAX_K", "PER_PAGE", "TEMPLATE_CHOICES", "private_paths",
           "TagPreview", "SetTags", "tags_json", "TextModelMismatch"]
