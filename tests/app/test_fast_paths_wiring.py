"""The product's encoding paths use the speed-ups: reduced-scale JPEG decoding (library add, repair/rebuild,
classify, search by image) and the float16 scan in library search."""

import torch

import clip_app.library.ingest as ingest_module
import clip_app.library.store as store_module
import clip_app.service as service_module
from clip_app.images import decode_image
from clip_app.label_sets import LabelSetStore
from clip_app.library import FeatureLibrary
from clip_app.service import App
from tests.support.fakes import solid_image
from tests.support.image_files import encode


def spy_decode(monkeypatch, module) -> list:
    calls = []

    def spy(data, name="image", max_pixels=None, min_side=None):
        calls.append(min_side)
        return decode_image(data, name, min_side=min_side)

    monkeypatch.setattr(module, "decode_image", spy)
    return calls


def jpeg(colour: str) -> bytes:
    return encode(solid_image(colour, (60, 40)), "JPEG", quality=95)


def test_library_add_and_rebuild_decode_at_the_encoders_scale(tmp_path, colour_encoder, monkeypatch):
    calls = spy_decode(monkeypatch, ingest_module)
    library = FeatureLibrary(tmp_path / "gallery", tmp_path / "lib.pth", colour_encoder)
    assert len(library.add([(jpeg("red"), "red.jpg"), (jpeg("blue"), "blue.jpg")]).added) == 2
    assert calls == [colour_encoder.decode_min_side] * 2
    rebuild_calls = spy_decode(monkeypatch, ingest_module)
    library.rebuild()
    assert rebuild_calls and set(rebuild_calls) == {colour_encoder.decode_min_side}


def test_classify_and_search_by_image_decode_at_the_encoders_scale(tmp_path, colour_encoder, monkeypatch):
    library = FeatureLibrary(tmp_path / "gallery", tmp_path / "lib.pth", colour_encoder)
    library.add([(jpeg("green"), "green.jpg")])
    app = App(colour_encoder, library, LabelSetStore(tmp_path / "sets.json"))
    calls = spy_decode(monkeypatch, service_module)
    assert app.classify(jpeg("red"), "red, green", save=False).scores[0].label == "red"
    app.search_image(jpeg("green"), k=1)
    assert calls == [colour_encoder.decode_min_side] * 2


def test_library_search_scans_the_stored_float16_rows(tmp_path, colour_encoder, monkeypatch):
    library = FeatureLibrary(tmp_path / "gallery", tmp_path / "lib.pth", colour_encoder)
    library.add([(jpeg("red"), "red.jpg"), (jpeg("blue"), "blue.jpg")])
    seen = []
    real_top_k = store_module.top_k

    def spy(query, features, ids, k):
        seen.append(features.dtype)
        return real_top_k(query, features, ids, k)

    monkeypatch.setattr(store_module, "top_k", spy)
    query = colour_encoder.encode_texts(["a red thing"])[0]
    (entry, score), = library.search(query, 1)
    assert seen == [torch.float16]
    assert entry.name.startswith("red") and isinstance(score, float)
