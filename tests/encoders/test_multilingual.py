"""Multilingual text towers: loading by path (sentence-transformers, M-CLIP), the compatibility table, routing per
text, the App's search and classify with Chinese text, and bad input."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from clip_app.classify import build_classifier
from clip_app.config import Settings
from clip_app.encoders import (
    ClipEncoder,
    ModelLoadError,
    RoutedTextEncoder,
    TextModelMismatch,
    check_pairing,
    known_text_model,
    load_text_model,
)
from clip_app.prompts import CHINESE_SINGLE_TEMPLATE, CHINESE_TEMPLATES, SINGLE_TEMPLATE, fill
from clip_app.service import MAX_QUERY_CHARS, SYMBOLS_NOTE, App, InputError
from clip_app.text_routing import is_chinese, is_plain_english, route
from tests.support.app_helpers import make_app
from tests.support.fakes import TINY_DIM, color_encoder
from tests.support.multilingual_helpers import save_tiny_mclip, save_tiny_sentence_transformer

COLOURS = ("red", "green", "blue", "yellow", "white")


@pytest.fixture(scope="module")
def st_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sentence_transformer(tmp_path_factory.mktemp("text") / "tiny-multilingual", TINY_DIM)


@pytest.fixture()
def routed(tiny_encoder: ClipEncoder, st_folder: Path) -> RoutedTextEncoder:
    return RoutedTextEncoder(tiny_encoder, load_text_model(str(st_folder)), "auto", tiny_encoder.identity)


@pytest.fixture()
def app(tmp_path: Path, tiny_encoder: ClipEncoder, routed: RoutedTextEncoder) -> App:
    made = make_app(tmp_path, tiny_encoder, COLOURS)
    made.text_encoder = routed
    return made


# ---- routing (pure) ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, tower", [
    ("a dog on the beach", "clip"), ("A DOG, 3 cats!", "clip"), ("🐶🐱", "clip"), ("?!...", "clip"),
    ("一只狗在海滩上", "multilingual"), ("一張貓的照片", "multilingual"), ("собака на пляже", "multilingual"),
    ("كلب على الشاطئ", "multilingual"), ("un café au lait", "multilingual"), ("Straße", "multilingual"),
    ("ein Hund mit Ball", "multilingual"), ("a photo of 猫", "multilingual"), ("犬の写真", "multilingual"),
])
def test_auto_routing_sends_plain_english_to_clip_and_the_rest_to_the_multilingual_tower(text: str, tower: str):
    assert route(text, "auto") == tower
    assert route(text, "multilingual") == "multilingual"


def test_chinese_detection_and_unknown_routing_mode() -> None:
    assert is_chinese("红色的车") and is_chinese("一張貓的照片")
    assert not is_chinese("犬の写真") and not is_chinese("cat")
    assert is_plain_english("") and not is_plain_english("naïve")
    with pytest.raises(ValueError, match="auto, multilingual"):
        route("cat", "english")


# ---- loading by path --------------------------------------------------------------------------------------------
def test_a_sentence_transformers_folder_gives_unit_float32_rows_truncated_and_cached(st_folder: Path) -> None:
    from sentence_transformers import SentenceTransformer

    tower = load_text_model(str(st_folder))
    assert tower.dim == TINY_DIM and tower.name == st_folder.name
    texts = ["一张红色的车的照片", "a red car", "红" * 10_000]
    rows = tower.encode_texts(texts)
    assert rows.dtype == torch.float32 and rows.shape == (3, TINY_DIM)
    assert torch.allclose(rows.norm(dim=-1), torch.ones(3), atol=1e-5)
    reference = SentenceTransformer(str(st_folder), device="cpu").encode(texts[:2], convert_to_tensor=True)
    assert torch.allclose(rows[:2], torch.nn.functional.normalize(reference.float(), dim=-1), atol=1e-5)
    encoded = tower.encoded
    assert torch.equal(tower.encode_texts(texts[:1]), rows[:1]) and tower.encoded == encoded  # from the cache


def test_an_mclip_folder_is_mean_pooled_then_projected(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

    folder = save_tiny_mclip(tmp_path / "XLM-tiny", TINY_DIM)
    tower = load_text_model(str(folder))
    texts = ["一张猫的照片。", "a photo of a cat"]
    rows = tower.encode_texts(texts)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)  # the reference, computed by hand
    config = {k: v for k, v in json.loads((folder / "config.json").read_text()).items()
              if k not in ("model_type", "modelBase", "transformerDimensions", "numDims")}
    model = XLMRobertaModel(XLMRobertaConfig(**config), add_pooling_layer=False).eval()
    model.load_state_dict({k[12:]: v for k, v in state.items() if k.startswith("transformer.")})
    tokens = AutoTokenizer.from_pretrained(str(folder))(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**tokens)[0]
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    expected = ((hidden * mask).sum(1) / mask.sum(1)) @ state["LinearTransformation.weight"].T
    expected = expected + state["LinearTransformation.bias"]
    assert torch.allclose(rows, torch.nn.functional.normalize(expected, dim=-1), atol=1e-5)


@pytest.mark.parametrize("damage, message", [
    ("missing", "not found"), ("empty", "not a sentence-transformers folder"), ("file", "is a file"),
    ("corrupt", "could not load the text model folder"),
])
def test_a_text_model_that_cannot_be_loaded_is_a_clear_error(tmp_path: Path, st_folder: Path, damage: str,
                                                              message: str) -> None:
    target = tmp_path / "model"
    if damage == "empty":
        target.mkdir()
    elif damage == "file":
        target.write_text("not a model")
    elif damage == "corrupt":
        shutil.copytree(st_folder, target)
        (target / "model.safetensors").write_bytes(b"\0garbage")
    with pytest.raises(ModelLoadError, match=message):
        load_text_model(str(target))


def test_a_hub_name_that_cannot_be_downloaded_names_the_local_folder_way_out(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ModelLoadError) as caught:
        load_text_model("clip-ViT-B-32-multilingual-v1", model_dir=tmp_path)
    assert "--text-model /path/to/clip-ViT-B-32-multilingual-v1" in str(caught.value)
    assert "CLIP_APP_TEXT_MODEL" in str(caught.value) and str(tmp_path) in str(caught.value)


# ---- the compatibility table ------------------------------------------------------------------------------------
def test_known_names_are_refused_with_the_wrong_image_model_naming_the_right_pairing() -> None:
    assert known_text_model("clip-ViT-B-32-multilingual-v1").image_models[0] == "ViT-B/32"
    check_pairing("clip-ViT-B-32-multilingual-v1", "open_clip:ViT-B-32/openai", 512)  # OpenAI's weights
    check_pairing("M-CLIP/XLM-Roberta-Large-Vit-B-16Plus", "open_clip:ViT-B-16-plus-240/laion400m_e31", 640)
    check_pairing("sentence-transformers/clip-ViT-B-32-multilingual-v1", "ViT-B/32", 512)
    check_pairing("M-CLIP/XLM-Roberta-Large-Vit-L-14", "ViT-L/14", 768)
    with pytest.raises(TextModelMismatch, match=r"aligned to OpenAI CLIP ViT-B/32.*--model ViT-B/32"):
        check_pairing("clip-ViT-B-32-multilingual-v1", "ViT-L/14", 768)
    with pytest.raises(TextModelMismatch, match="--model ViT-L/14.*M-CLIP/XLM-Roberta-Large-Vit-B-32"):
        check_pairing("M-CLIP/XLM-Roberta-Large-Vit-L-14", "ViT-B/32", 512)
    with pytest.raises(TextModelMismatch, match="none of OpenAI's.*--model open_clip:ViT-B-16-plus-240/laion400m_e31"):
        check_pairing("M-CLIP/XLM-Roberta-Large-Vit-B-16Plus", "ViT-B/32", 512)


def test_a_dimension_mismatch_is_refused(st_folder: Path) -> None:
    colour = color_encoder()  # 13-d features; the tiny tower gives 32-d ones
    with pytest.raises(TextModelMismatch, match="32-d features.*13-d"):
        RoutedTextEncoder(colour, load_text_model(str(st_folder)), "auto", colour.identity)


def test_a_local_folder_of_the_right_width_is_accepted_with_a_log_line(tiny_encoder: ClipEncoder, st_folder: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        RoutedTextEncoder(tiny_encoder, load_text_model(str(st_folder)), "auto", tiny_encoder.identity)
    assert "cannot be checked" in caplog.text and st_folder.name in caplog.text


# ---- which tower ran --------------------------------------------------------------------------------------------
def test_chinese_goes_to_the_multilingual_tower_and_english_to_clips(routed: RoutedTextEncoder) -> None:
    clip_before, ml_before = routed.clip_tower.cache_misses, routed.multilingual.encoded
    rows = routed.encode_texts(["一只红色的猫 (routing test)", "a red cat (routing test)"])
    assert routed.multilingual.encoded == ml_before + 1 and routed.clip_tower.cache_misses == clip_before + 1
    assert torch.equal(rows[0], routed.multilingual.encode_texts(["一只红色的猫 (routing test)"])[0])
    assert torch.equal(rows[1], routed.clip_tower.encode_texts(["a red cat (routing test)"])[0])
    assert not torch.allclose(rows[1], routed.multilingual.encode_texts(["a red cat (routing test)"])[0])


def test_chinese_search_ranks_by_the_multilingual_features(app: App) -> None:
    query = "红色的车"
    result = app.search_text(query, k=len(COLOURS))
    assert result.tower == app.text_encoder.multilingual.name and result.note is None
    ids, features = app.library.snapshot()
    expected = (features.float() @ app.text_encoder.multilingual.encode_texts([query])[0]).argsort(descending=True)
    assert [h.entry.id for h in result.hits] == [int(ids[i]) for i in expected]
    english = app.search_text("a red car", k=len(COLOURS))
    assert english.tower == f"CLIP {app.encoder.name}"
    expected = (features.float() @ app.encoder.encode_texts(["a red car"])[0]).argsort(descending=True)
    assert [h.entry.id for h in english.hits] == [int(ids[i]) for i in expected]


def test_chinese_labels_use_chinese_templates_through_the_multilingual_tower(app: App, tmp_path: Path) -> None:
    photo = app.library.page(1, 1)[0].path
    for mode, chinese in (("single", (CHINESE_SINGLE_TEMPLATE,)), ("ensemble", CHINESE_TEMPLATES)):
        result = app.classify(str(photo), "猫, dog, 红色的车", mode, save=False)
        english = (SINGLE_TEMPLATE,) if mode == "single" else result.templates
        expected = build_classifier(app.text_encoder, ["猫", "dog", "红色的车"], [chinese, english, chinese])
        feature = app.encoder.encode_images([Image.open(photo).convert("RGB")])[0]
        cos = {s.label: s.cosine for s in result.scores}
        assert [cos[label] for label in ("猫", "dog", "红色的车")] == pytest.approx(
            (feature @ expected).tolist(), abs=2e-3)
        ml = app.text_encoder.multilingual.name
        assert result.towers == {"猫": ml, "dog": f"CLIP {app.encoder.name}", "红色的车": ml}
    # a custom template applies to every label; the filled prompt is routed (mixed text: multilingual)
    custom = app.classify(str(photo), "猫, dog", "a {} toy", save=False)
    assert custom.towers == {"猫": app.text_encoder.multilingual.name, "dog": f"CLIP {app.encoder.name}"}
    assert app.text_encoder.multilingual.encode_texts([fill("a {} toy", "猫")]).shape == (1, TINY_DIM)


def test_bad_queries_get_a_defined_answer(app: App) -> None:
    emoji = app.search_text("🐶🐱!!", k=3)
    assert emoji.note == SYMBOLS_NOTE and emoji.tower == f"CLIP {app.encoder.name}" and len(emoji.hits) == 3
    mixed = app.search_text("a 红色 car на пляже", k=3)
    assert mixed.tower == app.text_encoder.multilingual.name and len(mixed.hits) == 3
    with pytest.raises(InputError, match=f"at most {MAX_QUERY_CHARS}"):
        app.search_text("红" * 10_000)
    assert len(app.search_text("红" * MAX_QUERY_CHARS, k=2).hits) == 2  # truncated by the tokenizer, answered


def test_stats_and_accepted_languages_name_the_text_model(app: App) -> None:
    extra = app.stats().extra
    assert extra["text_model"] == app.text_encoder.multilingual.name and extra["text_routing"] == "auto"
    assert app.accepted_languages().startswith("English, ")
    app.text_encoder = None
    assert app.accepted_languages() == "English" and "text_model" not in app.stats().extra
    assert app.search_text("一只猫", k=1).note is not None  # the English-only note, only without a text model


def test_settings_read_the_text_model_from_flags_and_environment(tmp_path: Path) -> None:
    import argparse

    from clip_app.config import add_settings_arguments

    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    env = {"CLIP_APP_TEXT_MODEL": "/models/m"}
    assert Settings.from_args(parser.parse_args([]), env).text_model == "/models/m"
    args = parser.parse_args(["--text-model", "x", "--text-routing", "multilingual"])
    settings = Settings.from_args(args, env)
    assert (settings.text_model, settings.text_routing) == ("x", "multilingual")
    assert Settings.from_env({}).text_model is None and Settings().text_routing == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["--text-routing", "english"])


def test_from_settings_loads_the_tower_and_refuses_a_mismatch(tmp_path: Path, tiny_checkpoint: Path,
                                                              st_folder: Path) -> None:
    settings = Settings(model=str(tiny_checkpoint), device="cpu", gallery_dir=tmp_path / "g",
                        library_file=tmp_path / "lib.pth", text_model=str(st_folder), text_routing="multilingual")
    app = App.from_settings(settings)
    assert app.text_encoder is not None and app.text_encoder.routing == "multilingual"
    assert app.text_tower("a dog") == st_folder.name
    with pytest.raises(TextModelMismatch, match="ViT-B/32"):
        App.from_settings(Settings(model=str(tiny_checkpoint), device="cpu", gallery_dir=tmp_path / "g",
                                   library_file=tmp_path / "lib.pth", text_model="clip-ViT-B-32-multilingual-v1"))


def test_index_stats_shows_the_text_model(tmp_path: Path, tiny_checkpoint: Path, capsys) -> None:
    from clip_app.index import main as index_main

    flags = ["--model", str(tiny_checkpoint), "--device", "cpu", "--gallery", str(tmp_path / "gallery"),
             "--library", str(tmp_path / "lib.pth")]
    assert index_main([*flags, "--text-model", "/models/m", "--text-routing", "multilingual", "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["text_model"], stats["text_routing"]) == ("/models/m", "multilingual")
    assert index_main([*flags, "stats"]) == 0
    assert "text model:    CLIP's own text tower (English)" in capsys.readouterr().out
