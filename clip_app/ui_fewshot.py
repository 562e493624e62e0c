"""The interface's few-shot parts (thin, like ui.py): examples per label in the Classify tab, the adapted answer
beside the zero-shot one, "more like these" in the Search tab and "use as example" in the Gallery tab.

Named endpoints: /add_example, /remove_example, /classify_adapted, /search_refine (see README)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import gradio as gr

from .service import DEFAULT_K, DEFAULT_METHOD, AdaptedResult, App, SearchResult
from .ui import (
    PRIVATE,
    READ_CONCURRENCY,
    WRITE_CONCURRENCY_ID,
    md_escape,
    search_items,
    search_text,
    uploaded_image,
    user_errors,
)

METHOD_CHOICES = [("Tip-Adapter (training-free)", "tip"), ("prototype blend", "prototype"),
                  ("linear probe", "linear")]
METHOD_NAMES = {value: name for name, value in METHOD_CHOICES}


# ---- formatting (pure) ------------------------------------------------------------------------------------------
def adapted_value(result: AdaptedResult) -> dict[str, float] | None:
    """gr.Label value of the adapted answer (None when the set has no usable examples)."""
    if result.adapted is None:
        return None
    return {s.label: round(s.probability, 6) for s in result.adapted}


def zero_shot_value(result: AdaptedResult) -> dict[str, float]:
    """gr.Label value of the zero-shot answer."""
    return {s.label: round(s.probability, 6) for s in result.zero_shot}


def adapted_note(result: AdaptedResult) -> str:
    """What the adapted answer is based on."""
    if result.adapted is None:
        text = "This label set has no examples yet: add some under *Examples* to teach it."
    else:
        params = ", ".join(f"{k} {v:g}" for k, v in result.params.items())
        text = (f"**With your examples** ({METHOD_NAMES.get(result.method, result.method)}; {result.n_examples} "
                f"example{'s' if result.n_examples != 1 else ''} of {result.labels_with_examples} of "
                f"{len(result.labels)} labels{'; ' + params if params else ''}). Zero-shot says "
                f"**{md_escape(result.zero_shot[0].label)}**, with examples "
                f"**{md_escape(result.adapted[0].label)}**.")
    if result.ignored:
        text += f" Ignored example IDs no longer in the library: {', '.join(map(str, result.ignored))}."
    return text


def ids_text(ids: list[int]) -> str:
    return ", ".join(str(i) for i in ids)


def toggle_id(text: str, image_id: int) -> str:
    """Add an ID to a comma-separated list, or take it out when it is there."""
    ids = [int(m) for m in re.findall(r"\d+", text or "")]
    ids = [i for i in ids if i != image_id] if image_id in ids else ids + [image_id]
    return ids_text(ids)


# ---- Classify tab ---------------------------------------------------------------------------------------------
@dataclass
class ExampleControls:
    label: gr.Dropdown
    ids: gr.Textbox
    add_ids: gr.Button
    add_photo: gr.Button
    remove_ids: gr.Button
    api_image: gr.Image
    examples: gr.JSON
    method: gr.Dropdown
    compare: gr.Button


@dataclass
class AdaptedOutputs:
    label: gr.Label
    note: gr.Markdown


def example_controls() -> ExampleControls:
    """The Examples accordion (under the label sets): label, IDs, add/remove, the set's examples, the method."""
    with gr.Accordion("Examples: teach the chosen label set with your photos", open=False):
        label = gr.Dropdown([], value=None, allow_custom_value=True, label="Label", elem_id="examples-label",
                            info="a label of the set picked above")
        ids = gr.Textbox(label="Image IDs", placeholder="12, 15 (IDs from the Gallery or Search tab)",
                         elem_id="examples-ids")
        with gr.Row():
            add_ids = gr.Button("Add IDs as examples", size="sm", elem_id="examples-add")
            add_photo = gr.Button("This photo is this label: add it", size="sm", elem_id="examples-add-photo")
            remove_ids = gr.Button("Remove IDs", size="sm", variant="stop")
        api_image = uploaded_image(label="photo (API)", visible=False)  # /add_example's optional upload
        examples = gr.JSON(label="Examples of this set (label: image IDs)", elem_id="examples-json")
        method = gr.Dropdown(METHOD_CHOICES, value=DEFAULT_METHOD, label="Adaptation method")
        compare = gr.Button("Classify with examples", elem_id="examples-classify")
    return ExampleControls(label, ids, add_ids, add_photo, remove_ids, api_image, examples, method, compare)


def adapted_outputs() -> AdaptedOutputs:
    """The adapted answer, shown beside the zero-shot one."""
    return AdaptedOutputs(gr.Label(num_top_classes=5, label="With your examples", elem_id="classify-adapted"),
                          gr.Markdown(elem_id="classify-adapted-note"))


def wire_classify(app: App, c: ExampleControls, out: AdaptedOutputs, *, image: gr.Image, labels: gr.Textbox,
                  template: gr.Dropdown, sets: gr.Dropdown, top: gr.Label, classified: Any) -> None:
    """Events of the examples controls; after each Classify, the adapted answer when the set has examples."""

    @user_errors
    def set_examples(name: str | None):
        if not name:
            return gr.Dropdown(choices=[], value=None), {}
        return gr.Dropdown(choices=app.label_set(name), value=None), app.label_examples(name)

    sets.input(set_examples, [sets], [c.label, c.examples], api_visibility=PRIVATE)

    @user_errors
    def add_example(label_set: str | None, label: str | None, image_ids: str = "", image: str | None = None):
        return app.add_examples(label_set or "", label or "", image_ids, image=image), ""

    c.add_ids.click(add_example, [sets, c.label, c.ids, c.api_image], [c.examples, c.ids], api_name="add_example",
                    concurrency_limit=1, concurrency_id=WRITE_CONCURRENCY_ID)

    @user_errors
    def add_photo_example(label_set: str | None, label: str | None, image: str | None):
        if not image:
            raise gr.Error("upload the photo first", print_exception=False)
        return app.add_examples(label_set or "", label or "", image=image)

    c.add_photo.click(add_photo_example, [sets, c.label, image], [c.examples], api_visibility=PRIVATE,
                      concurrency_limit=1, concurrency_id=WRITE_CONCURRENCY_ID)

    @user_errors
    def remove_example(label_set: str | None, label: str | None, image_ids: str):
        return app.remove_examples(label_set or "", label or "", image_ids), ""

    c.remove_ids.click(remove_example, [sets, c.label, c.ids], [c.examples, c.ids], api_name="remove_example",
                       concurrency_limit=1, concurrency_id=WRITE_CONCURRENCY_ID)

    @user_errors
    def classify_adapted(image: str | None, label_set: str | None, template: str = "single",
                         method: str = DEFAULT_METHOD):
        result = app.classify_adapted(image, label_set or "", template, method=method or DEFAULT_METHOD)
        best = (result.adapted or result.zero_shot)[0].label
        return zero_shot_value(result), adapted_value(result), adapted_note(result), best

    c.compare.click(classify_adapted, [image, sets, template, c.method], [top, out.label, out.note, c.label],
                    api_name="classify_adapted", concurrency_limit=READ_CONCURRENCY)

    @user_errors
    def adapt_after_classify(image: str | None, label_set: str | None, text: str, template: str, method: str):
        if not label_set or not app.label_examples(label_set):
            return None, "", gr.skip()
        if not app.examples_apply(label_set, text):
            return None, "*The labels differ from the chosen set: its examples are not used.*", gr.skip()
        _, value, note, best = classify_adapted(image, label_set, template, method)
        return value, note, best

    classified.success(adapt_after_classify, [image, sets, labels, template, c.method],
                       [out.label, out.note, c.label], api_visibility=PRIVATE, concurrency_limit=READ_CONCURRENCY)


# ---- Search tab -----------------------------------------------------------------------------------------------
def search_extras(app: App, *, query: gr.Textbox, k: gr.Slider, min_score: gr.Slider, results: gr.Gallery,
                  message: gr.Markdown, hit_ids: gr.State) -> None:
    """"More like these": clicking a result marks it as a positive (or negative) example; the button refines."""
    with gr.Row():
        mark = gr.Radio(["more like this", "less like this"], value="more like this",
                        label="Clicking a result marks it as", scale=1)
        positives = gr.Textbox(label="More like: image IDs", elem_id="search-positives", scale=1)
        negatives = gr.Textbox(label="Less like: image IDs", elem_id="search-negatives", scale=1)
        refine = gr.Button("More like these", elem_id="search-refine", scale=0)

    def mark_result(mark: str, positives: str, negatives: str, shown: list[int], evt: gr.SelectData):
        if evt.index is None or not 0 <= int(evt.index) < len(shown or []):
            return gr.skip(), gr.skip()
        image_id = int(shown[int(evt.index)])
        if mark == "less like this":
            return gr.skip(), toggle_id(negatives, image_id)
        return toggle_id(positives, image_id), gr.skip()

    results.select(mark_result, [mark, positives, negatives, hit_ids], [positives, negatives],
                   api_visibility=PRIVATE)

    @user_errors
    def search_refine(query: str = "", positive_ids: str = "", negative_ids: str = "", k: int = DEFAULT_K,
                      min_score: float = 0.0):
        result: SearchResult = app.search_refine(query, positive_ids, negative_ids, k, min_score)
        return search_items(result), search_text(result), [h.entry.id for h in result.hits]

    refine.click(search_refine, [query, positives, negatives, k, min_score], [results, message, hit_ids],
                 api_name="search_refine", concurrency_limit=READ_CONCURRENCY)


# ---- Gallery tab ----------------------------------------------------------------------------------------------
def gallery_extras(app: App, *, selected: gr.Number) -> None:
    """Use the selected gallery image as an example of a label of a saved set."""
    names, _ = app.label_set_choices()
    with gr.Row():
        label_set = gr.Dropdown(names, value=None, label="Label set", scale=1, elem_id="gallery-example-set",
                                allow_custom_value=True)
        label = gr.Textbox(label="Label", scale=1, elem_id="gallery-example-label")
        use = gr.Button("Use as example of this label", scale=0, elem_id="gallery-example-add")
    note = gr.Markdown(elem_id="gallery-example-note")

    @user_errors
    def use_as_example(image_id: float | None, label_set: str | None, label: str):
        if image_id in (None, ""):
            raise gr.Error("select an image first", print_exception=False)
        examples = app.add_examples(label_set or "", label or "", [int(image_id)])
        own = next((lab for lab in examples if lab.casefold() == " ".join((label or "").split()).casefold()), label)
        return f"Image #{int(image_id)} is an example of “{md_escape(own)}” in “{md_escape(label_set)}” " \
               f"({len(examples.get(own, []))} examples)."

    use.click(use_as_example, [selected, label_set, label], [note], api_visibility=PRIVATE, concurrency_limit=1,
              concurrency_id=WRITE_CONCURRENCY_ID)
