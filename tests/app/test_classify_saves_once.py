"""Classify with saving decodes and encodes the photo once and takes its stored row from add (no snapshot scan)."""

from __future__ import annotations

import torch

import clip_app.library.ingest as ingest_module
import clip_app.service as service_module
from clip_app.images import decode_image
from clip_app.label_sets import LabelSetStore
from clip_app.library import FeatureLibrary
from clip_app.service import App
from tests.support.library_helpers import image_bytes


def test_classify_with_save_decodes_once_and_uses_the_stored_row(tmp_path, colour_encoder, monkeypatch):
    library = FeatureLibrary(tmp_path / "gallery", tmp_path / "lib.pth", colour_encoder)
    app = App(colour_encoder, library, LabelSetStore(tmp_path / "sets.json"))
    decodes = []

    def spy(data, name="image", max_pixels=None, min_side=None):
        decodes.append(name)
        return decode_image(data, name, min_side=min_side)

    monkeypatch.setattr(ingest_module, "decode_image", spy)
    monkeypatch.setattr(service_module, "decode_image", spy)
    monkeypatch.setattr(FeatureLibrary, "snapshot", lambda self: (_ for _ in ()).throw(AssertionError("scanned")))
    first = app.classify(image_bytes("red"), "red, green", save=True)
    assert decodes == ["uploaded image"] and first.saved.status == "added" and first.scores[0].label == "red"
    stored = library.store.current().row_feature(first.saved.id)
    assert torch.equal(first.saved.feature, stored)
    again = app.classify(image_bytes("red"), "red, green", save=True)  # known photo: no decoding, its stored row
    assert decodes == ["uploaded image"] and again.saved.status == "duplicate" and again.saved.id == first.saved.id
    assert [s.probability for s in again.scores] == [s.probability for s in first.scores]
