"""Model families (open_clip, Chinese-CLIP) behind the one --model syntax, loaded from files through their real
loaders: small random models built in the test from the families' own configs, never downloaded."""

from __future__ import annotations

import builtins
import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from clip_app.encoders import ClipEncoder, ModelLoadError, model_identity
from clip_app.encoders import families as fam
from clip_app.encoders.families import ModelSpec, parse_model_spec
from clip_app.index import main as index_main
from clip_app.library import FeatureLibrary, ModelMismatchError
from tests.support.app_helpers import make_app, png_bytes, write_png
from tests.support.fakes import solid_image

TINY_OC = "ViT-T-16-cliptest"  # registered below from open_clip's own ViT-B-32 config, shrunk


def _tiny_open_clip_config(folder: Path, name: str = TINY_OC, width: int = 64) -> Path:
    """open_clip's ViT-B-32 config with every width cut to `width` and two layers: a real open_clip architecture."""
    import open_clip

    cfg = json.loads(json.dumps(open_clip.get_model_config("ViT-B-32")))
    cfg["embed_dim"] = 64
    cfg["vision_cfg"].update(image_size=64, layers=2, width=width, patch_size=16)
    cfg["text_cfg"].update(width=width, heads=2, layers=2)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return path


@pytest.fixture(scope="module")
def open_clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny open_clip model's state dict, saved as a user's local weights file."""
    import open_clip

    folder = tmp_path_factory.mktemp("open_clip")
    _tiny_open_clip_config(folder)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_OC, pretrained=None)
    path = folder / "tiny-open-clip.bin"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def open_clip_encoder(open_clip_file: Path) -> ClipEncoder:
    return ClipEncoder(f"open_clip:{TINY_OC}@{open_clip_file}", device="cpu")


@pytest.fixture(scope="module")
def cn_clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Chinese-CLIP's smallest architecture (RN50 + RBT3) with random weights, saved in cn_clip's checkpoint format."""
    from cn_clip.clip.utils import _MODEL_INFO, create_model

    with torch.device("meta"), contextlib.redirect_stdout(io.StringIO()):
        model = create_model(_MODEL_INFO["RN50"]["struct"])
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.02)
    path = tmp_path_factory.mktemp("cn_clip") / "cn-rn50.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


# ---- the syntax -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "spec"), [
    ("ViT-B/32", ModelSpec("clip", "ViT-B/32")),
    ("clip:RN50", ModelSpec("clip", "RN50")),
    ("/models/ViT-B-32.pt", ModelSpec("clip", "/models/ViT-B-32.pt")),
    ("open_clip:ViT-B-32/laion2b_s34b_b79k", ModelSpec("open_clip", "ViT-B-32", "laion2b_s34b_b79k")),
    ("open_clip:ViT-B-32@/m/w.bin", ModelSpec("open_clip", "ViT-B-32", file=Path("/m/w.bin"))),
    ("cn_clip:ViT-B-16", ModelSpec("cn_clip", "ViT-B-16")),
    ("cn_clip:RN50@/m/cn.pt", ModelSpec("cn_clip", "RN50", file=Path("/m/cn.pt"))),
])
def test_one_model_syntax_for_every_family(text: str, spec: ModelSpec) -> None:
    assert parse_model_spec(text) == spec


def test_unknown_family_architecture_and_tag_say_what_exists() -> None:
    with pytest.raises(ModelLoadError, match="unknown model family 'foo'.*clip, open_clip, cn_clip"):
        parse_model_spec("foo:bar")
    with pytest.raises(ModelLoadError, match="unknown open_clip architecture 'ViT-Q-99'"):
        model_identity("open_clip:ViT-Q-99/laion")
    with pytest.raises(ModelLoadError, match="unknown pretrained tag 'nope'.*laion2b_s34b_b79k"):
        model_identity("open_clip:ViT-B-32/nope")
    with pytest.raises(ModelLoadError, match="no pretrained tag"):
        model_identity("open_clip:ViT-B-32")
    with pytest.raises(ModelLoadError, match="unknown Chinese-CLIP model 'ViT-X'.*ViT-B-16"):
        model_identity("cn_clip:ViT-X")
    with pytest.raises(ModelLoadError, match="weights file not found"):
        model_identity("open_clip:ViT-B-32@/no/such/file.bin")


def test_named_models_are_identified_without_loading_and_offline_loading_names_the_way_out(tmp_path: Path,
                                                                                          monkeypatch) -> None:
    assert model_identity("open_clip:ViT-B-32/laion2b_s34b_b79k") == ("open_clip:ViT-B-32/laion2b_s34b_b79k",) * 2
    import open_clip

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("no network")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", offline)
    with pytest.raises(ModelLoadError) as info:
        ClipEncoder("open_clip:ViT-B-32/laion2b_s34b_b79k", device="cpu", download_root=tmp_path)
    assert "could not be found" in str(info.value) and "open_clip:ViT-B-32@/path/to/weights.bin" in str(info.value)


def test_a_missing_family_package_names_the_pip_package(monkeypatch) -> None:
    real_import = builtins.__import__

    def no_open_clip(name: str, *args: object, **kwargs: object) -> object:
        if name == "open_clip":
            raise ImportError("No module named 'open_clip'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_open_clip)
    with pytest.raises(ModelLoadError, match="pip install open_clip_torch"):
        model_identity("open_clip:ViT-B-32/laion2b_s34b_b79k")


def test_a_model_too_large_for_the_memory_says_how_much_it_needs(monkeypatch, open_clip_file: Path) -> None:
    monkeypatch.setattr(fam, "available_memory", lambda device: 1 << 20)
    with pytest.raises(ModelLoadError, match=rf"open_clip:{TINY_OC}@.*needs about .* GiB.*only 0.0 GiB is free"):
        ClipEncoder(f"open_clip:{TINY_OC}@{open_clip_file}", device="cpu")


def test_model_list_prints_every_family_with_published_figures(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        index_main(["--model", "list", "stats"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "ViT-B/32" in out and "63.2" in out
    assert "open_clip:ViT-B-32/laion2b_s34b_b79k" in out and "66.56" in out
    assert "cn_clip:ViT-B-16" in out


# ---- open_clip ------------------------------------------------------------------------------------------------
def test_open_clip_weights_file_loads_through_open_clip(open_clip_encoder: ClipEncoder, open_clip_file: Path) -> None:
    enc = open_clip_encoder
    assert enc.dim == 64 and enc.input_resolution == 64 and enc.family == "open_clip"
    assert enc.identity == model_identity(f"open_clip:{TINY_OC}@{open_clip_file}")[0]
    assert enc.identity.startswith("sha256:") and enc.name == f"open_clip:{TINY_OC}@tiny-open-clip.bin"
    images = enc.encode_images([solid_image("red"), solid_image("blue", (300, 90))])
    texts = enc.encode_texts(["a red square", "a blue square", "x" * 2000])
    for rows in (images, texts):
        assert rows.dtype == torch.float32 and torch.allclose(rows.norm(dim=-1), torch.ones(len(rows)), atol=1e-5)
    assert images.shape == (2, 64) and texts.shape == (3, 64)
    # the same model's own forward pass gives the same features: our wrapper adds nothing but normalisation
    import open_clip

    model = open_clip.create_model(TINY_OC, pretrained=str(open_clip_file)).eval()
    tokens = open_clip.get_tokenizer(TINY_OC)(["a red square"])
    with torch.no_grad():
        own = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
    assert torch.allclose(own[0], texts[0], atol=1e-5)


def test_weights_of_another_architecture_are_refused_clearly(tmp_path: Path, open_clip_file: Path) -> None:
    _tiny_open_clip_config(tmp_path, "ViT-T-16-cliptest-wide", width=96)
    with pytest.raises(ModelLoadError, match=r"could not load .* as open_clip:ViT-T-16-cliptest-wide weights.*state"):
        ClipEncoder(f"open_clip:ViT-T-16-cliptest-wide@{open_clip_file}", device="cpu")


def test_a_library_of_one_family_is_refused_by_another(tmp_path: Path, open_clip_encoder: ClipEncoder,
                                                       tiny_checkpoint: Path) -> None:
    library = FeatureLibrary(tmp_path / "gallery", tmp_path / "lib.pth", open_clip_encoder)
    write_png(tmp_path / "in" / "red.png", "red")
    assert len(library.add([tmp_path / "in" / "red.png"]).added) == 1
    with pytest.raises(ModelMismatchError, match="rebuild"):
        FeatureLibrary(tmp_path / "gallery", tmp_path / "lib.pth", ClipEncoder(str(tiny_checkpoint), device="cpu"))


def test_app_classify_and_search_with_an_open_clip_model(tmp_path: Path, open_clip_encoder: ClipEncoder) -> None:
    app = make_app(tmp_path, open_clip_encoder, ("red", "blue", "green"))
    result = app.classify(png_bytes("red"), "cat, dog, a red square", save=False)
    assert sorted(s.label for s in result.scores) == ["a red square", "cat", "dog"]
    assert abs(sum(s.probability for s in result.scores) - 1) < 1e-4
    found = app.search_text("a photo of a red square", k=3)
    assert len(found.hits) == 3 and found.hits[0].score >= found.hits[-1].score


def test_index_manager_with_an_open_clip_model(tmp_path: Path, open_clip_file: Path, capsys) -> None:
    write_png(tmp_path / "in" / "red.png", "red")
    write_png(tmp_path / "in" / "blue.png", "blue")
    flags = ["--model", f"open_clip:{TINY_OC}@{open_clip_file}", "--device", "cpu",
             "--gallery", str(tmp_path / "gallery"), "--library", str(tmp_path / "lib.pth")]
    assert index_main([*flags, "add", str(tmp_path / "in")]) == 0
    capsys.readouterr()
    assert index_main([*flags, "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["count"] == 2 and stats["dim"] == 64
    assert index_main([*flags, "check"]) == 0


# ---- Chinese-CLIP ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cn_clip_encoder(cn_clip_file: Path) -> ClipEncoder:
    return ClipEncoder(f"cn_clip:RN50@{cn_clip_file}", device="cpu")


def test_chinese_clip_weights_file_loads_through_cn_clip(cn_clip_encoder: ClipEncoder) -> None:
    enc = cn_clip_encoder
    assert enc.dim == 1024 and enc.input_resolution == 224 and enc.identity.startswith("sha256:")
    assert enc.family == "cn_clip"
    texts = enc.encode_texts(["一张猫的照片。", "a photo of a dog", "猫" * 500])
    images = enc.encode_images([solid_image("red")])
    assert texts.shape == (3, 1024) and images.shape == (1, 1024)
    assert torch.allclose(texts.norm(dim=-1), torch.ones(3), atol=1e-4)


def test_each_family_brings_its_own_imagenet_prompts() -> None:
    from clip_app.prompts import family_prompts, family_templates, imagenet_classnames

    names, templates, source = family_prompts("open_clip")
    assert len(names) == 1000 and len(templates) == 80 and "open_clip" in source
    assert all(t.count("{}") == 1 for t in templates)
    names, templates, _ = family_prompts("cn_clip")
    assert len(names) == 1000 and names[1] == "金鱼" and templates[0] == "{}的照片。"
    assert family_prompts("clip")[0] == imagenet_classnames()
    assert family_templates("single", "cn_clip") == ("{}的照片。",)
    assert family_templates("single", "open_clip") == ("a photo of a {}.",)
    assert len(family_templates("ensemble", "cn_clip")) == 80


def test_chinese_clip_classifies_with_its_chinese_templates(tmp_path: Path, cn_clip_encoder: ClipEncoder) -> None:
    enc = cn_clip_encoder
    app = make_app(tmp_path, enc)
    app.classify(png_bytes("red"), "猫, 狗", save=False)
    assert "猫的照片。" in enc._text_cache and "a photo of a 猫." not in enc._text_cache


def test_both_benchmarks_run_with_an_open_clip_model(tmp_path: Path, open_clip_file: Path, capsys) -> None:
    from clip_app.bench.__main__ import main as bench_main
    from tests.support.flickr8k_helpers import known_flickr8k
    from tests.support.imagenet_helpers import colour_samples, make_kaggle

    model = f"open_clip:{TINY_OC}@{open_clip_file}"
    root, out = make_kaggle(tmp_path / "imagenet", colour_samples()), tmp_path / "results"
    assert bench_main(["imagenet", "--root", str(root), "--model", model, "--prompts", "single", "--limit", "5",
                       "--batch-size", "4", "--workers", "0", "--device", "cpu", "--out", str(out), "--errors", "0",
                       "--no-progress"]) == 0
    record = json.loads(next(out.glob("imagenet-*.json")).read_text())
    assert record["model_identity"].startswith("sha256:") and record["prompts"]["single"]["n_images"] == 5
    flickr = known_flickr8k(tmp_path / "flickr", "kaggle")
    assert bench_main(["flickr8k", "--root", str(flickr), "--model", model, "--out", str(out), "--prefix", "",
                       "--batch-size", "4", "--workers", "0", "--device", "cpu", "--gallery-sizes", "3",
                       "--subsets", "1", "--examples", "1", "--no-progress"]) == 0
    result = json.loads(next(out.glob("flickr8k-*.json")).read_text())
    assert result["model_identity"] == record["model_identity"]
    assert 0 <= result["text_to_image"]["R@1"] <= result["text_to_image"]["R@10"] <= 1
    assert "text->image R@1" in capsys.readouterr().out


def test_open_clip_names_get_their_published_imagenet_figure() -> None:
    from clip_app.bench.imagenet.report import published_for

    assert published_for("open_clip:ViT-B-32/laion2b_s34b_b79k") == {"family_top1": 66.56}
    assert published_for("ViT-B/32")["paper_top1"] == 63.2


def test_perf_builds_random_weights_of_a_family_architecture(tmp_path: Path, open_clip_file: Path) -> None:
    from clip_app.bench.perf.setup import load_encoder

    encoder, model, random_weights = load_encoder(f"open_clip:{TINY_OC}", "cpu", tmp_path, 4)
    assert random_weights and model == f"open_clip:{TINY_OC}@{tmp_path / f'random-open_clip-{TINY_OC}.pt'}"
    assert encoder.dim == 64 and ClipEncoder(model, device="cpu").identity == encoder.identity
    given, same, random_weights = load_encoder(f"open_clip:{TINY_OC}@{open_clip_file}", "cpu", tmp_path, 4)
    assert not random_weights and same == f"open_clip:{TINY_OC}@{open_clip_file}"


def test_onnx_export_of_an_open_clip_vit_matches_its_pytorch_features(tmp_path: Path, open_clip_file: Path,
                                                                      open_clip_encoder: ClipEncoder) -> None:
    onnx = ClipEncoder(f"open_clip:{TINY_OC}@{open_clip_file}", device="cpu", backend="onnx",
                       download_root=tmp_path)
    assert onnx.backend == "onnx" and onnx.identity == open_clip_encoder.identity
    images = [solid_image("red"), solid_image("blue", (90, 300))]
    texts = ["a red square", "a photo of a dog on the beach"]
    for ours, theirs in ((onnx.encode_images(images), open_clip_encoder.encode_images(images)),
                         (onnx.encode_texts(texts), open_clip_encoder.encode_texts(texts))):
        assert torch.nn.functional.cosine_similarity(ours, theirs).min() > 0.9999


def test_perf_forward_references_run_each_family_through_its_own_tokenizer(open_clip_encoder: ClipEncoder,
                                                                          cn_clip_encoder: ClipEncoder) -> None:
    from clip_app.bench.perf.encode import image_forward, text_forward

    for encoder in (open_clip_encoder, cn_clip_encoder):
        text_forward(encoder)()
        image_forward(encoder, 2)()
        full = encoder.encode_tokens(encoder.tokenize(["一只猫", "a cat"]), trim=False)
        assert torch.allclose(torch.nn.functional.normalize(full, dim=-1), encoder.encode_texts(["一只猫", "a cat"]),
                              atol=1e-4)
