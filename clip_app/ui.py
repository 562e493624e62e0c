"""The Gradio interface: build_demo(app) -> gr.Blocks with the Classify, Search, Gallery and Library tabs.

Thin by design: it declares components, wires each event to one App method, formats the results and turns the
App's typed errors into gr.Error. No model code, no file access, no similarity math here.
"""

from __future__ import annotations

import functools
import logging
import time
import types
from pathlib import Path
from typing import Any, Callable, Sequence

import gradio as gr

from .service import (
    DEFAULT_K,
    DEFAULT_MAX_REQUEST_SIZE,
    DEFAULT_TAG_THRESHOLD,
    MAX_K,
    PER_PAGE,
    TEMPLATE_CHOICES,
    USER_ERRORS,
    App,
    BodyLimit,
    ClassifyResult,
    GalleryPage,
    SearchResult,
    forget_on_delete,
    format_size,
    private_paths,
    thumbs_dir,
)

log = logging.getLogger(__name__)

#: Read-only endpoints serve this many requests at once; writes are serialised (and locked again by the App).
READ_CONCURRENCY = 4
WRITE_CONCURRENCY_ID = "library-writes"
TEMPLATE_OPTIONS = [(f"{name}: {meaning}", name) for name, meaning in TEMPLATE_CHOICES.items()]
PRIVATE = "private"  # internal helper events: not in the API docs, not callable by clients
#: browser/API sessions whose state Gradio keeps (oldest dropped first); each holds about 110-170 KB, so at most
#: about 170 MB instead of 1.7 GB at Gradio's default of 10,000. A dropped session only forgets its page's IDs.
SESSION_CAPACITY = 1000
#: the demo gallery shipped with the repository (gallery/CREDITS.md says what each photo shows)
DEMO_GALLERY = Path(__file__).resolve().parent.parent / "gallery"
#: Classify tab examples: (demo photo, labels that fit it, template); saving is off for examples
CLASSIFY_EXAMPLES: list[tuple[str, str, str]] = [
    ("000002.png", "cat, dog, coffee, rocket", "single"),
    ("000003.png", "a cup of coffee, a glass of beer, a bowl of soup, a slice of cake", "single"),
    ("000004.jpg", "a rocket launch, an airplane, a lighthouse, fireworks", "single"),
    ("000001.png", "astronaut, pilot, doctor, chef, firefighter", "ensemble"),
    ("000007.png", "coins, buttons, cookies, medals", "single"),
    ("000008.png", "clock, compass, plate, steering wheel", "single"),
]
#: Search tab examples: queries that match photos of the demo gallery
SEARCH_EXAMPLES: list[str] = ["a cat", "a cup of coffee", "a rocket launch", "an astronaut in a space suit",
                              "ancient coins", "a brick wall", "galaxies in deep space", "a person with a camera"]


def uploaded_image(**kwargs: Any) -> gr.Image:
    """A gr.Image input (type "filepath") that hands the uploaded file over untouched, for the App to decode.

    gr.Image's own preprocessing opens the file with Pillow first and, in its default "RGB" mode, re-encodes it:
    transparent pixels lose their alpha (a clear PNG became its hidden colour, not white), 16-bit images are clipped,
    the stored bytes are no longer the user's file (so a photo saved from Classify was not recognised as a duplicate
    later), and a file that is not an image failed inside Gradio with an unreadable error naming a temp path. Here
    images.py decodes every upload the same way and explains what is wrong with it. Gradio has already checked that
    the path lies in its upload cache when preprocess runs. (The method is replaced on the instance: a subclass of a
    Gradio component makes Gradio write a .pyi stub next to this module.)"""
    image = gr.Image(type="filepath", **kwargs)
    image.preprocess = types.MethodType(_keep_upload, image)  # type: ignore[method-assign]
    return image


def _keep_upload(self: gr.Image, payload: Any) -> Any:
    if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
        return str(payload.path)
    return gr.Image.preprocess(self, payload)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a handler; the App's typed errors become a gr.Error with the same message (nothing was changed)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            raise gr.Error(str(exc), print_exception=False) from exc

    return wrapper


def md_escape(text: object) -> str:
    """Text shown literally inside Markdown (file names, labels, reasons)."""
    out = str(text)
    for ch in "\\`*_[]<>|":
        out = out.replace(ch, "\\" + ch)
    return out


# ---- formatting (pure) ------------------------------------------------------------------------------------------
def label_value(result: ClassifyResult) -> dict[str, float]:
    """gr.Label value: label -> probability."""
    return {s.label: round(s.probability, 6) for s in result.scores}


def cosine_rows(result: ClassifyResult) -> list[list[Any]]:
    """Table rows [label, probability, cosine], best first."""
    return [[s.label, round(s.probability, 4), round(s.cosine, 4)] for s in result.scores]


def tags_text(result: ClassifyResult) -> str:
    """The tag-mode list, or '' when tag mode is off."""
    if result.tags is None:
        return ""
    if not result.tags:
        return f"**Tags** (cosine ≥ {result.threshold:.2f}): no label reaches the threshold."
    listed = ", ".join(f"{md_escape(s.label)} ({s.cosine:.3f})" for s in result.tags)
    return f"**Tags** (cosine ≥ {result.threshold:.2f}): {listed}"


def saved_text(result: ClassifyResult) -> str:
    """What happened to the photo in the gallery (and, with a multilingual tower, which tower read each label)."""
    text = _saved_line(result)
    if result.towers:
        groups: dict[str, list[str]] = {}
        for label, tower in result.towers.items():
            groups.setdefault(tower, []).append(md_escape(label))
        text += "\n\nText towers: " + "; ".join(f"{md_escape(t)} for {', '.join(ls)}" for t, ls in groups.items())
    return text


def _saved_line(result: ClassifyResult) -> str:
    saved = result.saved
    if saved is None:
        return "Not saved to the gallery."
    if saved.status == "duplicate":
        return f"Already in the gallery as **#{saved.id}** (recognised by its content)."
    if saved.status == "added":
        text = f"Saved to the gallery as **#{saved.id}**."
        if saved.near_duplicate_of is not None:
            text += f" It looks almost the same as #{saved.near_duplicate_of} (cosine {saved.similarity:.3f})."
        return text
    return f"Not saved to the gallery: {md_escape(saved.error or saved.status)}"


#: shown in place of a gallery entry that cannot be shown (a folder, a link out of the gallery, damaged data)
UNAVAILABLE_IMAGE = Path(__file__).resolve().parent / "data" / "unavailable.png"


def shown(path: Path | None) -> str:
    """The file a gallery item shows: the thumbnail (or file), else the 'cannot be shown' picture."""
    return str(path) if path is not None else str(UNAVAILABLE_IMAGE)


def search_items(result: SearchResult) -> list[tuple[str, str]]:
    """gr.Gallery value: (thumbnail, '#ID · score') for each hit; an entry that cannot be shown is marked."""
    return [(shown(h.thumbnail), f"#{h.entry.id} · {h.score:.3f}" + (f" · cannot be shown: {h.problem}"
                                                                     if h.problem else "")) for h in result.hits]


def search_text(result: SearchResult) -> str:
    """The line under the search results."""
    if result.library_size == 0:
        lines = ["The library is empty: add images in the Library tab."]
    elif not result.hits and result.hidden:
        lines = [f"No image reaches the minimum score of {result.min_score:.2f} ({result.hidden} weaker "
                 "matches hidden): lower the minimum score."]
    else:
        lines = [f"{len(result.hits)} of {result.library_size} images shown"
                 + (f"; {result.hidden} under the minimum score hidden." if result.hidden else ".")]
    if result.note:
        lines.append(f"*{result.note}*")
    if result.tower:
        lines.append(f"Text tower: {md_escape(result.tower)}")
    return "\n\n".join(lines)


def query_label(app: App) -> str:
    """The search box's label: which languages it accepts."""
    return f"Describe the images you are looking for ({app.accepted_languages()})"


def page_items(page: GalleryPage) -> list[tuple[str, str]]:
    """gr.Gallery value for one gallery page: thumbnails; an entry that cannot be shown is marked."""
    thumbs = page.thumbnails or [e.path for e in page.entries]
    return [(shown(t), f"#{e.id}" + (f" · cannot be shown: {page.problems[e.id]}" if e.id in page.problems else ""))
            for e, t in zip(page.entries, thumbs)]


def page_text(page: GalleryPage) -> str:
    """'Page 2 of 3 · 130 images'."""
    if page.total == 0:
        return "The library is empty: add images in the Library tab (or classify with saving on)."
    return f"Page {page.page} of {page.pages} · {page.total} image{'s' if page.total != 1 else ''}"


def entry_text(entry: Any) -> str:
    """ID, file name, size and date added of one image."""
    added = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.added))
    original = f" (uploaded as {md_escape(entry.name)})" if getattr(entry, "name", "") else ""
    return f"**#{entry.id}** · file {md_escape(entry.file)}{original} · {format_size(entry.size)} · added {added}"


def add_summary(report: Any) -> str:
    """The upload summary: counts, then the duplicates, near-duplicates and failures by name."""
    lines = [f"**Added {len(report.added)}**, duplicates {len(report.duplicates)}, near-duplicates "
             f"{len(report.near_duplicates)}, failed {len(report.failed)}."]
    for r in report.duplicates:
        lines.append(f"- {md_escape(r.name)}: already in the library as #{r.id}")
    for r in report.near_duplicates:
        lines.append(f"- {md_escape(r.name)}: added as #{r.id}, almost the same as #{r.near_duplicate_of} "
                     f"(cosine {r.similarity:.3f})")
    for r in report.failed:
        reason = (r.error or "failed").removeprefix(f"{r.name}: ")
        lines.append(f"- {md_escape(r.name)}: failed: {md_escape(reason)}")
    return "\n".join(lines)


def stats_text(app: App) -> str:
    """The library's count, model, feature size and file size."""
    s = app.stats()
    text_model = (f" · text model {md_escape(s.extra['text_model'])} ({md_escape(s.extra['text_routing'])} routing)"
                  if s.extra.get("text_model") else "")
    return (f"**{s.count}** images · model {md_escape(s.model)} ({s.dim}-d features){text_model} · library file "
            f"{format_size(s.file_size)} · gallery {md_escape(s.gallery_dir)}")


def report_text(title: str, lines: Sequence[str], ok_line: str) -> str:
    """A check/repair/rebuild report as Markdown."""
    body = "\n".join(f"- {md_escape(line)}" for line in lines) if lines else ok_line
    return f"**{title}**\n\n{body}"


# ---- the interface ----------------------------------------------------------------------------------------------
def build_demo(app: App) -> gr.Blocks:
    """The whole interface for one App (built once; every browser tab shares the App)."""
    if forget_on_delete not in app.delete_listeners:  # a deleted image's served copies go with it
        app.delete_listeners.append(forget_on_delete)
    with gr.Blocks(title="clip-app", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        gr.Markdown(f"# clip-app\nZero-shot classification and image search with CLIP · model "
                    f"{md_escape(app.encoder.name)} on {app.encoder.device}"
                    + (f" · text model {md_escape(app.text_encoder.multilingual.name)}" if app.text_encoder else ""))
        with gr.Tabs():
            with gr.Tab("Classify", id="classify"):
                _classify_tab(app)
            with gr.Tab("Search", id="search"):
                _search_tab(app)
            with gr.Tab("Gallery", id="gallery") as gallery_tab:
                refresh = _gallery_tab(app)
            with gr.Tab("Library", id="library") as library_tab:
                refresh_stats = _library_tab(app)
        gallery_tab.select(refresh.fn, refresh.inputs, refresh.outputs, api_visibility=PRIVATE,
                           concurrency_limit=READ_CONCURRENCY)
        library_tab.select(refresh_stats.fn, None, refresh_stats.outputs, api_visibility=PRIVATE)
    demo.queue(default_concurrency_limit=READ_CONCURRENCY)
    return demo


def example_files() -> list[Path]:
    """The demo gallery photos the Classify examples use (those present)."""
    return [DEMO_GALLERY / name for name, _, _ in CLASSIFY_EXAMPLES if (DEMO_GALLERY / name).is_file()]


def classify_examples() -> list[list[Any]]:
    """gr.Examples rows [photo, labels, template, save=False] for the demo photos that are present."""
    return [[str(DEMO_GALLERY / name), labels, template, False] for name, labels, template in CLASSIFY_EXAMPLES
            if (DEMO_GALLERY / name).is_file()]


def full_image(app: App) -> Callable[..., Any]:
    """A select handler over a list of IDs: (the full gallery file, or hidden when it cannot be shown; details)."""

    @user_errors
    def pick(shown_ids: list[int], evt: gr.SelectData):
        if evt.index is None or not 0 <= int(evt.index) < len(shown_ids):
            return gr.skip(), gr.skip()
        entry = app.image_info(shown_ids[int(evt.index)])
        _, problem = app.shown_file(entry)
        if problem:
            return gr.Image(value=None, visible=False), entry_text(entry) + f" · cannot be shown: {md_escape(problem)}"
        return gr.Image(value=str(entry.path), visible=True), entry_text(entry)

    return pick


class _Wiring:
    """A handler with its inputs and outputs, for events wired in more than one place."""

    def __init__(self, fn: Callable[..., Any], inputs: list[Any] | None, outputs: list[Any]) -> None:
        self.fn, self.inputs, self.outputs = fn, inputs, outputs


def _classify_tab(app: App) -> None:
    from .ui_fewshot import adapted_outputs, example_controls, wire_classify

    with gr.Row():
        with gr.Column(scale=1):
            image = uploaded_image(label="Photo", sources=["upload", "clipboard"], height=260,
                                   elem_id="classify-image")
            labels = gr.Textbox(label="Labels", lines=4, max_lines=12, elem_id="classify-labels",
                                placeholder="cat, dog, bicycle (separate labels with commas or new lines)")
            template = gr.Dropdown(TEMPLATE_OPTIONS, value="single", allow_custom_value=True,
                                   label="Prompt template",
                                   info="pick one, or type your own template containing {} where the label goes")
            with gr.Row():
                tag_mode = gr.Checkbox(False, label="Tag mode (every label over the threshold)")
                threshold = gr.Slider(0.0, 1.0, DEFAULT_TAG_THRESHOLD, step=0.01, label="Tag threshold (cosine)")
            save = gr.Checkbox(True, label="Save this photo to the gallery")
            run = gr.Button("Classify", variant="primary", elem_id="classify-run")
            set_names, set_problem = app.label_set_choices()  # a damaged file: the built-in sets and why
            with gr.Accordion("Label sets", open=set_problem is not None):
                sets = gr.Dropdown(set_names, value=None, label="Saved label sets", allow_custom_value=True,
                                   info="picking a set fills the labels box")  # any name: sets saved later (API)
                set_name = gr.Textbox(label="Name", placeholder="name to save the labels under, or the new name")
                with gr.Row():
                    save_set = gr.Button("Save labels as set", size="sm")
                    rename_set = gr.Button("Rename set", size="sm")
                    delete_set = gr.Button("Delete set", size="sm", variant="stop")
                set_message = gr.Markdown(md_escape(set_problem) if set_problem else "")
            examples = example_controls()
        with gr.Column(scale=1):
            with gr.Row():
                top = gr.Label(num_top_classes=5, label="Top labels", elem_id="classify-top")
                table = gr.Dataframe(headers=["label", "probability", "cosine"],
                                     datatype=["str", "number", "number"], interactive=False,
                                     label="Each label's raw cosine", max_height=360)
            adapted = adapted_outputs()
            tag_list = gr.Markdown(label="tags", elem_id="classify-tags")
            saved = gr.Markdown(label="saved", elem_id="classify-saved")

    @user_errors
    def classify(image: str | None, labels: str, template: str, tag_mode: bool = False,
                 threshold: float = DEFAULT_TAG_THRESHOLD, save: bool = True):
        result = app.classify(image, labels, template, save=bool(save),
                              tag_threshold=threshold if tag_mode else None)  # the App checks the number
        return label_value(result), cosine_rows(result), tags_text(result), saved_text(result)

    classified = run.click(classify, [image, labels, template, tag_mode, threshold, save],
                           [top, table, tag_list, saved], api_name="classify", concurrency_limit=READ_CONCURRENCY)
    wire_classify(app, examples, adapted, image=image, labels=labels, template=template, sets=sets, top=top,
                  classified=classified)
    rows = classify_examples()
    if rows:
        gr.Examples(rows, [image, labels, template, save], label="Examples (demo gallery photos; not saved)")

    @user_errors
    def pick_set(name: str | None):
        if not name:
            return gr.skip(), gr.skip()
        return "\n".join(app.label_set(name)), name

    @user_errors
    def save_labels(name: str, labels: str):
        cleaned = app.save_label_set(name, labels)
        name = " ".join(name.split())
        return gr.Dropdown(choices=app.label_set_names(), value=name), f"Saved {len(cleaned)} labels as " \
            f"“{md_escape(name)}”."

    @user_errors
    def rename(old: str | None, new: str):
        app.rename_label_set(old or "", new)
        new = " ".join((new or "").split())
        return gr.Dropdown(choices=app.label_set_names(), value=new), f"Renamed to “{md_escape(new)}”."

    @user_errors
    def delete(name: str | None):
        app.delete_label_set(name or "")
        return gr.Dropdown(choices=app.label_set_names(), value=None), f"Deleted “{md_escape(name)}”."

    sets.input(pick_set, [sets], [labels, set_name], api_visibility=PRIVATE)
    save_set.click(save_labels, [set_name, labels], [sets, set_message], api_visibility=PRIVATE)
    rename_set.click(rename, [sets, set_name], [sets, set_message], api_visibility=PRIVATE)
    delete_set.click(delete, [sets], [sets, set_message], api_visibility=PRIVATE)


def _search_tab(app: App) -> None:
    with gr.Row():
        with gr.Column(scale=2):
            query = gr.Textbox(label=query_label(app),
                               placeholder="a dog playing on the beach", elem_id="search-query")
            run = gr.Button("Search", variant="primary", elem_id="search-run")
        with gr.Column(scale=1):
            example = uploaded_image(label="…or search by an example image", height=160,
                                     sources=["upload", "clipboard"])
            run_image = gr.Button("Search by image")
    with gr.Row():
        k = gr.Slider(1, MAX_K, DEFAULT_K, step=1, label="Top K")
        min_score = gr.Slider(0.0, 1.0, 0.0, step=0.01, label="Minimum score (cosine): hide weaker matches")
    results = gr.Gallery(label="Results (thumbnails: click one for the full image)", columns=6, height="auto",
                         interactive=False, allow_preview=False, object_fit="cover", elem_id="search-results")
    message = gr.Markdown(label="message", elem_id="search-message")
    hit_ids = gr.State([])
    with gr.Row():
        full = gr.Image(type="filepath", label="Full image", interactive=False, height=420, visible=False,
                        elem_id="search-full")
        details = gr.Markdown(elem_id="search-details")
    gr.Examples([[q] for q in SEARCH_EXAMPLES], [query], label="Example queries (they match the demo gallery)")

    @user_errors
    def by_text(query: str, k: int = DEFAULT_K, min_score: float = 0.0):
        result = app.search_text(query, k, min_score)  # k as sent: the App refuses 2.5, NaN
        return search_items(result), search_text(result), [h.entry.id for h in result.hits]

    @user_errors
    def by_image(image: str | None, k: int = DEFAULT_K, min_score: float = 0.0):
        result = app.search_image(image, k, min_score)
        return search_items(result), search_text(result), [h.entry.id for h in result.hits]

    outputs = [results, message, hit_ids]
    run.click(by_text, [query, k, min_score], outputs, api_name="search", concurrency_limit=READ_CONCURRENCY)
    query.submit(by_text, [query, k, min_score], outputs, api_visibility=PRIVATE, concurrency_limit=READ_CONCURRENCY)
    run_image.click(by_image, [example, k, min_score], outputs, api_name="search_by_image",
                    concurrency_limit=READ_CONCURRENCY)
    results.select(full_image(app), [hit_ids], [full, details], api_visibility=PRIVATE)
    from .ui_fewshot import search_extras

    search_extras(app, query=query, k=k, min_score=min_score, results=results, message=message, hit_ids=hit_ids)


def _gallery_tab(app: App) -> _Wiring:
    with gr.Row():
        previous = gr.Button("◀ Previous", size="sm", scale=0)
        # precision=None: the number reaches the App as sent (precision=0 rounded 6.6 to 7 and failed on NaN)
        page = gr.Number(1, precision=None, label="Page", scale=0, min_width=100)
        show = gr.Button("Show page", size="sm", scale=0)
        following = gr.Button("Next ▶", size="sm", scale=0)
        info = gr.Markdown(label="page_info", elem_id="gallery-info")
    images = gr.Gallery(label=f"Images ({PER_PAGE} per page)", columns=8, height="auto", interactive=False,
                        allow_preview=False, object_fit="cover", elem_id="gallery-images")
    ids = gr.State([])
    with gr.Row():
        selected = gr.Number(None, precision=None, label="Selected image ID", scale=0, min_width=160)
        details = gr.Markdown("Select an image to see its details.", label="details", elem_id="gallery-details")
        delete = gr.Button("Delete this image…", variant="stop", scale=0, elem_id="gallery-delete")
    full = gr.Image(type="filepath", label="Full image", interactive=False, height=480, visible=False,
                    elem_id="gallery-full")
    with gr.Row(visible=False) as confirm:
        question = gr.Markdown()
        yes = gr.Button("Yes, delete it", variant="stop", scale=0, elem_id="gallery-confirm")
        no = gr.Button("Cancel", scale=0)
    message = gr.Markdown(label="message", elem_id="gallery-message")
    from .ui_fewshot import gallery_extras

    gallery_extras(app, selected=selected)

    @user_errors
    def show_page(page: float | None = 1):
        result = app.gallery_page(page)
        return page_items(result), page_text(result), result.page, [e.id for e in result.entries]

    outputs = [images, info, page, ids]
    show.click(show_page, [page], outputs, api_name="gallery_page", concurrency_limit=READ_CONCURRENCY)
    page.submit(show_page, [page], outputs, api_visibility=PRIVATE)
    previous.click(lambda n: show_page((n or 1) - 1), [page], outputs, api_visibility=PRIVATE)
    following.click(lambda n: show_page((n or 1) + 1), [page], outputs, api_visibility=PRIVATE)

    show_full = full_image(app)

    @user_errors
    def pick(page_ids: list[int], evt: gr.SelectData):
        if evt.index is None or not 0 <= int(evt.index) < len(page_ids):
            return gr.skip(), gr.skip(), gr.Row(visible=False), gr.skip()
        image, text = show_full(page_ids, evt)
        return page_ids[int(evt.index)], text, gr.Row(visible=False), image

    images.select(pick, [ids], [selected, details, confirm, full], api_visibility=PRIVATE)

    @user_errors
    def ask(image_id: float | None):
        entry = app.image_info(image_id)
        return gr.Row(visible=True), f"Delete image **#{entry.id}** ({md_escape(entry.file)}) for good?"

    delete.click(ask, [selected], [confirm, question], api_visibility=PRIVATE)
    no.click(lambda: gr.Row(visible=False), None, [confirm], api_visibility=PRIVATE)

    @user_errors
    def delete_image(id: float | None):  # the API's parameter name
        entry = app.delete_image(id)
        return f"Deleted image #{entry.id} ({md_escape(entry.file)}).", None, "", gr.Row(visible=False)

    yes.click(delete_image, [selected], [message, selected, details, confirm], api_name="delete_image",
              concurrency_limit=1, concurrency_id=WRITE_CONCURRENCY_ID
              ).success(show_page, [page], outputs, api_visibility=PRIVATE
                        ).then(lambda: gr.Image(value=None, visible=False), None, [full], api_visibility=PRIVATE)
    return _Wiring(show_page, [page], outputs)


def _library_tab(app: App) -> _Wiring:
    files = gr.File(file_count="multiple", type="filepath", label="Images to add (several at once)",
                    elem_id="library-files")
    add = gr.Button("Add to library", variant="primary", elem_id="library-add")
    summary = gr.Markdown(label="summary", elem_id="library-summary")
    stats = gr.Markdown(stats_text(app), label="stats", elem_id="library-stats")
    with gr.Row():
        check = gr.Button("Check")
        repair = gr.Button("Repair")
        rebuild = gr.Button("Rebuild (re-encode every image)")
    report = gr.Markdown()

    @user_errors
    def add_images(files: list[str] | None, progress=gr.Progress()):
        def step(done: int, total: int) -> None:
            progress((done, total), desc="Encoding images", unit="images")

        result = app.add_images(files or [], progress=step)
        return add_summary(result), stats_text(app)

    add.click(add_images, [files], [summary, stats], api_name="add_images", concurrency_limit=1,
              concurrency_id=WRITE_CONCURRENCY_ID)

    @user_errors
    def run_check(progress=gr.Progress()):
        result = app.check(progress=lambda done, total: progress((done, total), desc="Checking files", unit="files"))
        lines = [f"{p.kind}: {p.detail}" for p in result.problems]
        return report_text("Check", lines, "Everything agrees: no problems found."), stats_text(app)

    @user_errors
    def run_repair(progress=gr.Progress()):
        result = app.repair(progress=lambda done, total: progress((done, total), desc="Reading files", unit="files"))
        return report_text("Repair", list(result.actions), "Nothing needed repairing."), stats_text(app)

    @user_errors
    def run_rebuild(progress=gr.Progress()):
        result = app.rebuild(progress=lambda done, total: progress((done, total), desc="Re-encoding"))
        lines = [f"{len(result.reencoded)} images re-encoded with {result.model} (before: {result.previous_model}); "
                 f"{result.count} in the library.", *result.actions]
        return report_text("Rebuild", lines, ""), stats_text(app)

    check.click(run_check, None, [report, stats], api_visibility=PRIVATE)
    repair.click(run_repair, None, [report, stats], api_visibility=PRIVATE, concurrency_limit=1,
                 concurrency_id=WRITE_CONCURRENCY_ID)
    rebuild.click(run_rebuild, None, [report, stats], api_visibility=PRIVATE, concurrency_limit=1,
                  concurrency_id=WRITE_CONCURRENCY_ID)
    return _Wiring(lambda: stats_text(app), None, [stats])


# ---- launching --------------------------------------------------------------------------------------------------
def launch(demo: gr.Blocks, *, gallery_dir: Path, library_file: Path | None = None, host: str = "127.0.0.1",
           port: int | None = 7860, auth: tuple[str, str] | None = None, share: bool = False,
           max_file_size: int | str | None = None, prevent_thread_lock: bool = False, quiet: bool = False,
           max_request_size: int = DEFAULT_MAX_REQUEST_SIZE) -> Any:
    """Start the server: files are served only from the gallery, its thumbnails folder and Gradio's own cache, never
    the library file, its lock, journal or label sets (when they lie in the gallery folder) nor the gallery's
    quarantine folder; request bodies other than uploads are capped at max_request_size bytes (413 above)."""
    from starlette.middleware import Middleware


    allowed = [str(Path(gallery_dir).resolve()), str(thumbs_dir(Path(gallery_dir)).resolve()),
               str(UNAVAILABLE_IMAGE)] + [str(p) for p in example_files()]
    return demo.launch(server_name=host, server_port=port, auth=auth, share=share, max_file_size=max_file_size,
                       allowed_paths=allowed, show_error=True,
                       app_kwargs={"middleware": [Middleware(BodyLimit, limit=max_request_size)]},
                       state_session_capacity=SESSION_CAPACITY,
                       blocked_paths=launch_blocked_paths(gallery_dir, library_file),
                       prevent_thread_lock=prevent_thread_lock, quiet=quiet, ssr_mode=False, inbrowser=False,
                       auth_message="clip-app: sign in" if auth else None)


def launch_blocked_paths(gallery_dir: Path, library_file: Path | None) -> list[str]:
    """Gradio's blocked_paths (absolute, links resolved): see launch()."""
    return [str(path.resolve()) for path in private_paths(gallery_dir, library_file)]
