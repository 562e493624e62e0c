"""The tags part of the interface: the Library tab's "Tags" panel (tag the library with a set, edit each label's
threshold with a live count and the borderline images), the tag filter choices, and the /images_with_tag endpoint.

Thin like ui.py: components, events wired to App methods, formatting; the App's typed errors become gr.Error.
"""

from __future__ import annotations

from typing import Any, Callable

import gradio as gr

from .service import App, SetTags, TagPreview, tags_json

PRIVATE = "private"
NO_TAG = ""


def md(text: object) -> str:
    """Text shown literally inside Markdown."""
    out = str(text)
    for ch in "\\`*_[]<>|":
        out = out.replace(ch, "\\" + ch)
    return out


# ---- formatting (pure) ------------------------------------------------------------------------------------------
def tag_summary(tags: SetTags) -> str:
    """What tagging did: each label's count and threshold."""
    counts = tags.counts()
    lines = [f"**Tagged {len(tags.ids)} images** with “{md(tags.name)}” (images added later are tagged too):"]
    lines += [f"- {md(label)}: {counts[label]} image{'' if counts[label] == 1 else 's'} (cosine ≥ "
              f"{float(tags.thresholds[c]):.3f})" for c, label in enumerate(tags.labels)]
    return "\n".join(lines)


def preview_text(preview: TagPreview) -> str:
    """The live count of a threshold."""
    return (f"At cosine ≥ {preview.threshold:.3f}, **{preview.count}** image{'' if preview.count == 1 else 's'} "
            f"would be tagged “{md(preview.label)}”.")


def strip(pairs: list[tuple[Any, float]]) -> list[tuple[str, str]]:
    """gr.Gallery value of borderline images: (file, '#ID · cosine')."""
    return [(str(entry.path), f"#{entry.id} · {cos:.3f}") for entry, cos in pairs]


def tag_choice_list(app: App) -> list[tuple[str, str]]:
    """Dropdown choices for filtering by tag: ('label · count', label), with a 'no filter' choice first."""
    return [("(all images)", NO_TAG)] + [(f"{label} · {count}", label) for label, count in app.tag_choices()]


def tagged_rows(app: App, tag: str, set_name: str = "") -> list[dict]:
    """The /images_with_tag answer: [{"id", "file"}] of the images carrying a tag, in ID order."""
    return [{"id": e.id, "file": e.file} for e in app.images_with_tag(tag, set_name or None)]


# ---- the panel --------------------------------------------------------------------------------------------------
def tags_panel(app: App, user_errors: Callable[[Callable[..., Any]], Callable[..., Any]],
               write_id: str) -> tuple[Callable[[], Any], gr.Dropdown]:
    """The Library tab's Tags panel; returns a handler that refreshes its set choices, and that dropdown."""
    with gr.Accordion("Tags: tag the whole library with a label set", open=False):
        with gr.Row():
            set_name = gr.Dropdown(_saved_sets(app), value=None, label="Label set", elem_id="tags-set",
                                   allow_custom_value=True,  # API clients name sets saved after the page was built
                                   info="save sets in the Classify tab's Label sets panel")
            run = gr.Button("Tag the library", variant="primary", scale=0, elem_id="tags-run")
        summary = gr.Markdown(elem_id="tags-summary")
        result = gr.JSON(label="Tags (JSON)", visible=False)
        with gr.Row():
            label = gr.Dropdown([], value=None, label="Label", elem_id="tags-label", allow_custom_value=True)
            threshold = gr.Slider(-1.0, 1.0, app.tags.default_threshold, step=0.005, label="Threshold (cosine)",
                                  elem_id="tags-threshold")
            keep = gr.Button("Save this threshold", scale=0, elem_id="tags-save-threshold")
        count = gr.Markdown(elem_id="tags-count")
        with gr.Row():
            above = gr.Gallery(label="Just above the threshold (tagged)", columns=6, height=140,
                               allow_preview=False, object_fit="cover", elem_id="tags-above")
            below = gr.Gallery(label="Just below the threshold (not tagged)", columns=6, height=140,
                               allow_preview=False, object_fit="cover", elem_id="tags-below")

    @user_errors
    def tag_library(set_name: str | None, progress=gr.Progress()):
        tags = app.tag_library(set_name or "", progress=lambda done, total: progress(
            (done, total), desc="Tagging", unit="images"))
        first = tags.labels[0]
        return (tag_summary(tags), tags_json(tags), gr.Dropdown(choices=list(tags.labels), value=first),
                float(tags.thresholds[0]))

    run.click(tag_library, [set_name], [summary, result, label, threshold], api_name="tag_library",
              concurrency_limit=1, concurrency_id=write_id).success(
        _preview(app, user_errors), [set_name, label, threshold], [count, above, below], api_visibility=PRIVATE)

    @user_errors
    def pick_label(set_name: str | None, label: str | None):
        if not set_name or not label:
            return gr.skip()
        tags = app.set_tags(set_name)
        return float(tags.thresholds[tags.column(label)])

    preview = _preview(app, user_errors)
    label.input(pick_label, [set_name, label], [threshold], api_visibility=PRIVATE).success(
        preview, [set_name, label, threshold], [count, above, below], api_visibility=PRIVATE)
    threshold.release(preview, [set_name, label, threshold], [count, above, below], api_visibility=PRIVATE,
                      trigger_mode="always_last")

    @user_errors
    def save_threshold(set_name: str | None, label: str | None, value: float):
        if not set_name or not label:
            raise gr.Error("tag the library with a set and pick a label first", print_exception=False)
        tags = app.set_tag_thresholds(set_name, per_label={label: value})
        return tag_summary(tags), tags_json(tags)

    keep.click(save_threshold, [set_name, label, threshold], [summary, result], api_visibility=PRIVATE,
               concurrency_limit=1, concurrency_id=write_id)

    @user_errors
    def images_with_tag(tag: str, set_name: str = "") -> list[dict]:
        """The images carrying a tag: [{"id": int, "file": str}] in ID order."""
        return tagged_rows(app, tag, set_name)

    gr.api(images_with_tag, api_name="images_with_tag", concurrency_limit=4)
    return (lambda: gr.Dropdown(choices=_saved_sets(app))), set_name


def _preview(app: App, user_errors: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Callable[..., Any]:
    @user_errors
    def preview(set_name: str | None, label: str | None, threshold: float):
        if not set_name or not label:
            return "", [], []
        result = app.tag_preview(set_name, label, threshold)
        return preview_text(result), strip(result.above), strip(result.below)

    return preview


def _saved_sets(app: App) -> list[str]:
    names, _ = app.label_set_choices()
    return [name for name in names if not app.label_sets.is_builtin(name)]
