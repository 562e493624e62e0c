"""The Classify and Search examples (issue 12): demo gallery photos with label lists that fit what CREDITS.md says
they show, example queries, wired into the interface and runnable."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

import clip_app.ui as ui
from tests.support.app_helpers import make_app

CREDITS = (ui.DEMO_GALLERY / "CREDITS.md").read_text(encoding="utf-8")


def credited_subject(file: str) -> str:
    """The 'What it shows' column of CREDITS.md for a demo file."""
    row = next(line for line in CREDITS.splitlines() if line.startswith(f"| {file} "))
    return row.split("|")[3].strip().lower()


def test_each_classify_example_is_a_demo_photo_whose_subject_is_among_its_labels() -> None:
    rows = ui.classify_examples()
    assert len(rows) == len(ui.CLASSIFY_EXAMPLES) >= 5
    for (file, labels, template), row in zip(ui.CLASSIFY_EXAMPLES, rows):
        assert Path(row[0]).is_file() and row[1:] == [labels, template, False]  # examples are never saved
        subject = credited_subject(file)
        first = labels.split(",")[0].strip().removeprefix("a ").removeprefix("an ")
        assert any(word in subject for word in first.split() if len(word) >= 3), (file, first, subject)
    assert ui.CLASSIFY_EXAMPLES[0][:2] == ("000002.png", "cat, dog, coffee, rocket")


def test_the_examples_are_in_the_interface_and_run(tmp_path: Path, colour_encoder) -> None:
    app = make_app(tmp_path, colour_encoder, ("red",))
    demo = ui.build_demo(app)
    datasets = [b for b in demo.blocks.values() if isinstance(b, gr.Dataset)]
    samples = [s for d in datasets for s in d.samples]
    assert any("cat, dog, coffee, rocket" in map(str, s) for s in samples)
    assert any(s == ["a cat"] for s in [list(map(str, s)) for s in samples])
    photo, labels, template, save = ui.classify_examples()[0]
    result = app.classify(photo, labels, template, save=save)
    assert [s.label for s in result.scores] and result.saved is None and len(app.library) == 1
