"""Tags (issue 14) beside few-shot examples (issue 15), trained heads and the label sets document seam (issue 19):
tags of a set with examples use the few-shot prototype blend; every key of a set survives every write through
_read_document/_write_document; one `labels` command registry holds both sides' commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clip_app.adapt import Examples, prototype_head
from clip_app.classify import LOGIT_SCALE
from clip_app.index import build_parser
from clip_app.index import main as index_main
from clip_app.index_labels import LABEL_COMMANDS
from clip_app.label_sets import LabelSetStore
from clip_app.service import App
from tests.support.app_helpers import make_app

COLOURS = ("red", "orange", "green", "blue", "purple")


@pytest.fixture()
def app(tmp_path: Path, colour_encoder) -> App:
    app = make_app(tmp_path, colour_encoder, COLOURS)
    app.save_label_set("kinds", "type A, type B")  # names that mean nothing to the model
    return app


def ids_of(app: App) -> dict[str, int]:
    return {Path(e.name).stem: e.id for e in app.library}


def test_tags_of_a_set_with_examples_use_the_prototype_blend_and_follow_the_examples(app: App) -> None:
    ids = ids_of(app)
    zero = app.tag_library("kinds")
    text = app.classifiers.get(app.texts, ["type A", "type B"], [("a photo of a {}.",)] * 2).float()
    assert torch.allclose(zero.classifier, text, atol=1e-6)  # no examples: Classify's own columns

    app.add_examples("kinds", "type A", [ids["red"], ids["orange"]])
    app.add_examples("kinds", "type B", [ids["blue"]])
    adapted = app.tag_library("kinds")  # examples changed: recomputed with the blend
    snapshot_ids, features = app.library.snapshot()
    rows = [int((snapshot_ids == ids[c]).nonzero()[0, 0]) for c in ("red", "orange", "blue")]
    expected = prototype_head(text, Examples(features[rows].float(), torch.tensor([0, 0, 1]), 2)).weight / LOGIT_SCALE
    assert torch.allclose(adapted.classifier, expected, atol=1e-5)
    assert torch.allclose(adapted.classifier.norm(dim=0), torch.ones(2), atol=1e-5)  # thresholds stay cosines
    row = {int(i): n for n, i in enumerate(adapted.ids.tolist())}
    for colour, column in (("red", 0), ("orange", 0), ("blue", 1), ("purple", 1)):
        cos = adapted.cosines[row[ids[colour]]]
        assert cos[column] > cos[1 - column], colour  # the blend tells the colours apart

    app.remove_examples("kinds", None, [ids["red"], ids["orange"], ids["blue"]])
    again = app.tag_library("kinds")
    assert torch.allclose(again.classifier, text, atol=1e-6)  # back to zero-shot when the examples are gone


class MemoryLabelSets(LabelSetStore):
    """The document seam as the PostgreSQL store uses it: nothing touches the file."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.document: dict | None = None

    def _read_document(self) -> dict | None:
        return None if self.document is None else json.loads(json.dumps(self.document))

    def _write_document(self, document: dict) -> None:
        self.document = json.loads(json.dumps(document))


def test_every_key_of_a_set_survives_every_write_through_the_document_seam(tmp_path: Path) -> None:
    store = MemoryLabelSets(tmp_path / "label_sets.json")
    store.save("pets", "cat, dog, bird", template="ensemble")
    store.update("pets", threshold=0.3, thresholds={"cat": 0.2}, tagged=True)
    store.add_examples("pets", "CAT", [4, 5])
    store.add_examples("pets", "dog", [7])
    head = {"model": "m", "labels": ["cat", "dog", "bird"], "weight": [[0.0]], "bias": [0.0]}
    store.document["heads"] = {"pets": head}  # as finetune writes it (only carried here, never parsed)
    store.document["sets"]["pets"]["colour"] = "blue"  # a key another version wrote
    store.update("pets", threshold=0.35)
    store.add_examples("pets", "bird", [9])
    store.save("other", "x, y")
    doc = store.document
    assert doc["sets"]["pets"] == {"labels": ["cat", "dog", "bird"], "template": "ensemble", "threshold": 0.35,
                                   "thresholds": {"cat": 0.2}, "tagged": True, "colour": "blue"}
    assert doc["examples"]["pets"] == {"cat": [4, 5], "dog": [7], "bird": [9]} and doc["heads"]["pets"] == head
    assert doc["sets"]["other"] == ["x", "y"]

    store.save("pets", "cat, bird, fish")  # changed labels: examples of kept labels stay, the head goes
    assert store.examples("pets") == {"cat": [4, 5], "bird": [9]}
    kept = store.get_set("pets")
    assert (kept.template, kept.threshold, dict(kept.thresholds), kept.tagged) == ("ensemble", 0.35, {"cat": 0.2},
                                                                                   True)
    assert "heads" not in store.document or "pets" not in store.document["heads"]
    store.rename("pets", "animals")
    assert store.examples("animals") == {"cat": [4, 5], "bird": [9]} and store.get_set("animals").tagged
    assert store.forget_images([4]) == 1 and store.examples("animals") == {"cat": [5], "bird": [9]}
    store.delete("animals")
    assert "animals" not in store.document["sets"] and "examples" not in store.document
    assert not (tmp_path / "label_sets.json").exists()


def test_one_labels_registry_holds_the_set_and_the_example_commands(tmp_path: Path, capsys) -> None:
    assert set(LABEL_COMMANDS) == {"add", "list", "remove", "rename", "example", "examples"}
    assert build_parser().parse_args(["labels", "example", "pets", "cat", "3", "4"]).ids == [3, 4]
    flags = ["--library", str(tmp_path / "features_library.pth"), "--gallery", str(tmp_path / "gallery")]
    assert index_main([*flags, "labels", "add", "pets", "cat, dog", "--template", "ensemble"]) == 0
    store = LabelSetStore(tmp_path / "label_sets.json")
    store.add_examples("pets", "cat", [3])
    assert index_main([*flags, "labels", "rename", "pets", "animals"]) == 0
    capsys.readouterr()
    assert index_main([*flags, "labels", "examples", "animals", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"cat": [3]}
    assert index_main([*flags, "labels", "list", "--json"]) == 0
    listed = {s["name"]: s for s in json.loads(capsys.readouterr().out)}
    assert listed["animals"]["template"] == "ensemble" and listed["animals"]["labels"] == ["cat", "dog"]
    assert index_main([*flags, "labels", "example", "nope", "cat", "3", "--remove"]) == 1  # unknown set: exit 1
    assert index_main([*flags, "labels", "add", "pets", ""]) == 1  # no labels: exit 1


def test_tags_and_the_neutral_prompts_read_text_through_the_routed_tower(tmp_path: Path, tiny_encoder) -> None:
    from clip_app.classify import build_classifier
    from clip_app.encoders import RoutedTextEncoder, load_text_model
    from clip_app.prompts import CHINESE_SINGLE_TEMPLATE, NEUTRAL_LABEL, NEUTRAL_PROMPTS, SINGLE_TEMPLATE
    from tests.support.fakes import TINY_DIM
    from tests.support.multilingual_helpers import save_tiny_sentence_transformer

    folder = save_tiny_sentence_transformer(tmp_path / "tiny-multilingual", TINY_DIM)
    app = make_app(tmp_path / "lib", tiny_encoder, ("red", "green", "blue"))
    app.text_encoder = RoutedTextEncoder(tiny_encoder, load_text_model(str(folder)), "auto", tiny_encoder.identity)
    app.save_label_set("mixed", "猫, dog")
    tags = app.tag_library("mixed")
    expected = build_classifier(app.text_encoder, ["猫", "dog"], [(CHINESE_SINGLE_TEMPLATE,), (SINGLE_TEMPLATE,)])
    assert torch.allclose(tags.classifier, expected.float(), atol=1e-5)  # as Classify: Chinese templates, routed
    plain = build_classifier(tiny_encoder, ["猫", "dog"], [(SINGLE_TEMPLATE,)] * 2)
    assert not torch.allclose(tags.classifier[:, 0], plain[:, 0].float(), atol=1e-3)  # not CLIP's own tower
    neutral = build_classifier(app.text_encoder, [NEUTRAL_LABEL], NEUTRAL_PROMPTS)[:, 0]
    assert torch.allclose(app.neutral_direction(), neutral.float(), atol=1e-5)
