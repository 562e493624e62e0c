"""The App's actions, called in process with the colour model and a real feature library in tmp_path."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest

from clip_app.classify import LabelError
from clip_app.images import ImageError
from clip_app.label_sets import IMAGENET_SET, LabelSetError
from clip_app.library import UnknownImageError
from clip_app.prompts import imagenet_classnames, imagenet_templates
from clip_app.service import MAX_K, App, FileTooLargeError, InputError, english_note, format_size, parse_size
from tests.support.app_helpers import make_app, png_bytes, write_png
from tests.support.threads import run_in_threads

RGB = ("red", "green", "blue")


@pytest.fixture()
def app(tmp_path: Path, colour_encoder) -> App:
    return make_app(tmp_path, colour_encoder, RGB)


def gallery_files(app: App) -> list[str]:
    folder = Path(app.stats().gallery_dir)
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


# ---- classify -------------------------------------------------------------------------------------------------
def test_classify_ranks_the_right_label_and_saves_a_new_photo(app: App, tmp_path: Path) -> None:
    photo = write_png(tmp_path / "upload" / "photo.png", "yellow")
    result = app.classify(str(photo), "red, yellow\nblue", "single")
    assert [s.label for s in result.scores][0] == "yellow"
    assert sorted(s.label for s in result.scores) == ["blue", "red", "yellow"]
    assert abs(sum(s.probability for s in result.scores) - 1) < 1e-5
    assert result.scores[0].cosine > result.scores[1].cosine
    assert result.saved is not None and result.saved.status == "added"
    assert app.image_info(result.saved.id).file.endswith(".png")
    assert len(app.library) == 4


def test_classify_recognises_a_known_photo_by_its_bytes(app: App) -> None:
    first = app.classify(png_bytes("cyan"), "cyan, red")
    again = app.classify(png_bytes("cyan"), "cyan, red")
    assert first.saved.status == "added"
    assert again.saved.status == "duplicate" and again.saved.id == first.saved.id
    assert len(app.library) == 4


def test_classify_encodes_a_photo_at_most_once(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    passes: list[int] = []
    original = app.encoder.encode_pixels
    monkeypatch.setattr(app.encoder, "encode_pixels", lambda pixels: passes.append(len(pixels)) or original(pixels))
    fresh = app.classify(png_bytes("purple"), "purple, red")
    assert passes == [1] and fresh.scores[0].label == "purple"  # encoded once, by the library, and reused
    known = app.classify(png_bytes("purple"), "purple, red")
    assert passes == [1] and known.saved.status == "duplicate"  # a stored photo is not encoded again
    assert [round(s.cosine, 3) for s in known.scores] == [round(s.cosine, 3) for s in fresh.scores]
    app.classify(png_bytes("purple"), "purple, red", save=False)
    assert passes == [1, 1]


def test_classify_without_saving_changes_nothing(app: App) -> None:
    before = gallery_files(app)
    result = app.classify(png_bytes("magenta"), "magenta, red", save=False)
    assert result.saved is None and result.scores[0].label == "magenta"
    assert gallery_files(app) == before and len(app.library) == 3


def test_classify_tag_mode_lists_every_label_over_the_threshold(app: App) -> None:
    plain = app.classify(png_bytes("red"), "red, green, blue", save=False)
    assert plain.tags is None
    cos = {s.label: s.cosine for s in plain.scores}
    threshold = (cos["red"] + max(cos["green"], cos["blue"])) / 2
    tagged = app.classify(png_bytes("red"), "red, green, blue", save=False, tag_threshold=threshold)
    assert [s.label for s in tagged.tags] == ["red"] and tagged.threshold == threshold
    everything = app.classify(png_bytes("red"), "red, green, blue", save=False, tag_threshold=-1.0)
    assert [s.label for s in everything.tags] == sorted(cos, key=lambda k: -cos[k])


def test_classify_templates_single_ensemble_and_custom(app: App) -> None:
    assert app.classify(png_bytes("red"), "red", "single", save=False).templates == ("a photo of a {}.",)
    assert app.classify(png_bytes("red"), "red", "ensemble", save=False).templates == imagenet_templates()
    custom = app.classify(png_bytes("red"), "red, blue", "a {} square", save=False)
    assert custom.templates == ("a {} square",) and custom.scores[0].label == "red"


def test_a_label_set_is_encoded_once(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = app.encoder.encode_texts
    monkeypatch.setattr(app.encoder, "encode_texts", lambda texts: calls.append(len(texts)) or original(texts))
    for _ in range(3):
        app.classify(png_bytes("red"), "red, green, blue", "ensemble", save=False)
    assert calls == [3 * 80]


@pytest.mark.parametrize("image, labels, template, error", [
    (None, "red", "single", InputError),
    ("", "red", "single", InputError),
    (b"this is not an image", "red", "single", ImageError),
    ("PHOTO", " , \n ", "single", LabelError),
    ("PHOTO", "red", "no placeholder", InputError),
    ("PHOTO", "red", "{} and {}", InputError),
])
def test_classify_bad_input_is_a_clear_error_and_changes_nothing(app: App, tmp_path: Path, image, labels, template,
                                                                 error) -> None:
    if image == "PHOTO":
        image = str(write_png(tmp_path / "photo.png", "orange"))
    before = gallery_files(app)
    with pytest.raises(error) as info:
        app.classify(image, labels, template)
    assert str(info.value)
    assert gallery_files(app) == before and len(app.library) == 3


def test_files_over_the_size_limit_are_refused_before_anything_is_stored(tmp_path: Path, colour_encoder) -> None:
    app = make_app(tmp_path, colour_encoder, max_file_size=500)
    big = write_png(tmp_path / "big.png", (10, 200, 30), size=(400, 400))
    big.write_bytes(big.read_bytes() + b"\0" * 1000)  # a PNG with trailing bytes, well over 500 bytes
    with pytest.raises(FileTooLargeError, match="big.png.*over the size limit"):
        app.classify(str(big), "red")
    with pytest.raises(FileTooLargeError):
        app.classify(big.read_bytes(), "red")
    small = write_png(tmp_path / "small.png", "red", size=(8, 8))
    with pytest.raises(FileTooLargeError):
        app.add_images([small, big])
    with pytest.raises(FileTooLargeError):
        app.search_image(str(big))
    assert len(app.library) == 0 and gallery_files(app) == []


# ---- label sets -----------------------------------------------------------------------------------------------
def test_label_sets_save_rename_delete_persist_beside_the_library(app: App, tmp_path: Path, colour_encoder) -> None:
    assert app.label_set_names() == [IMAGENET_SET]
    assert app.save_label_set("  my  colours ", "red, green\nred") == ["red", "green"]
    assert app.label_set("my colours") == ["red", "green"]
    file = tmp_path / "label_sets.json"
    assert json.loads(file.read_text())["sets"] == {"my colours": ["red", "green"]}
    app.rename_label_set("my colours", "rgb")
    assert app.label_set_names() == [IMAGENET_SET, "rgb"]
    reopened = make_app(tmp_path, colour_encoder)  # a second App over the same library sees the saved set
    assert reopened.label_set("rgb") == ["red", "green"]
    app.delete_label_set("rgb")
    assert app.label_set_names() == [IMAGENET_SET]


def test_the_imagenet_set_is_built_in_and_read_only(app: App) -> None:
    assert app.label_set(IMAGENET_SET) == list(imagenet_classnames()) and len(app.label_set(IMAGENET_SET)) == 1000
    for action in (lambda: app.save_label_set(IMAGENET_SET, "x"), lambda: app.delete_label_set(IMAGENET_SET),
                   lambda: app.rename_label_set(IMAGENET_SET, "mine")):
        with pytest.raises(LabelSetError, match="read-only"):
            action()


def test_label_set_errors(app: App, tmp_path: Path) -> None:
    with pytest.raises(LabelSetError, match="no label set"):
        app.label_set("nope")
    with pytest.raises(LabelSetError, match="name"):
        app.save_label_set("   ", "red")
    with pytest.raises(LabelError):
        app.save_label_set("empty", " , ")
    app.save_label_set("a", "red")
    app.save_label_set("b", "blue")
    with pytest.raises(LabelSetError, match="already exists"):
        app.rename_label_set("a", "b")
    with pytest.raises(InputError):
        app.delete_label_set("")
    assert app.label_set("a") == ["red"] and app.label_set("b") == ["blue"]


def test_an_unreadable_label_sets_file_is_reported_and_left_untouched(app: App, tmp_path: Path) -> None:
    file = tmp_path / "label_sets.json"
    file.write_text("{not json")
    with pytest.raises(LabelSetError, match="cannot be read"):
        app.label_set_names()
    with pytest.raises(LabelSetError):
        app.save_label_set("x", "red")
    assert file.read_text() == "{not json"
    assert app.classify(png_bytes("red"), "red, blue", save=False).scores[0].label == "red"  # typed labels still work


def test_a_label_set_save_that_fails_is_a_label_set_error_and_keeps_the_saved_sets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import clip_app.files
    from clip_app.label_sets import LabelSetStore

    (tmp_path / "plain-file").write_text("not a folder")
    with pytest.raises(LabelSetError, match="could not be saved"):
        LabelSetStore(tmp_path / "plain-file" / "label_sets.json").save("pets", "cat, dog")
    store = LabelSetStore(tmp_path / "label_sets.json")
    store.save("pets", "cat, dog")
    before = store.path.read_bytes()

    def disk_full(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(clip_app.files.os, "replace", disk_full)  # the library's atomic writer is used
    with pytest.raises(LabelSetError, match="No space left"):
        store.save("birds", "owl")
    assert store.path.read_bytes() == before and store.names()[1:] == ["pets"]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_one_file_hash_helper() -> None:
    from clip_app import files
    from clip_app.encoders import clip_torch
    from clip_app.library import feature_library, ingest, maintenance

    assert maintenance.sha256_file is files.sha256_file is clip_torch.file_sha256
    assert ingest.sha256_bytes is feature_library.sha256_bytes is files.sha256_bytes


# ---- search ---------------------------------------------------------------------------------------------------
def test_search_text_finds_the_matching_colour_first(app: App) -> None:
    result = app.search_text("a photo of something red", k=2)
    assert [app.image_info(h.entry.id).path.read_bytes() == png_bytes("red") for h in result.hits] == [True, False]
    assert result.hits[0].score >= result.hits[1].score and result.library_size == 3
    assert result.note is None and result.hidden == 0
    assert len(app.search_text("blue", k=MAX_K).hits) == 3


def test_search_min_score_hides_weak_matches_and_counts_them(app: App) -> None:
    every = app.search_text("green", k=3)
    cut = (every.hits[0].score + every.hits[1].score) / 2
    some = app.search_text("green", k=3, min_score=cut)
    assert [h.entry.id for h in some.hits] == [every.hits[0].entry.id] and some.hidden == 2
    above = [h for h in every.hits if h.score >= 1.0]  # a minimum score is a cosine: at most 1
    none = app.search_text("green", k=3, min_score=1.0)
    assert len(none.hits) == len(above) and none.hidden == 3 - len(above)
    with pytest.raises(InputError, match="between -1 and 1"):
        app.search_text("green", k=3, min_score=1.01)


@pytest.mark.parametrize("query, k", [("", 5), ("   ", 5), ("red", 0), ("red", MAX_K + 1), ("red", 2.5), ("red", "x")])
def test_search_bad_input(app: App, query: str, k) -> None:
    with pytest.raises(InputError):
        app.search_text(query, k)


def test_non_english_queries_still_run_with_a_note(app: App) -> None:
    for query in ("красный автомобиль", "赤い車", "ein rotes Auto mit Hund", "une voiture rouge"):
        result = app.search_text(query, k=2)
        assert "English" in (result.note or ""), query
        assert len(result.hits) == 2
    for query in ("a red car", "dog on the beach", "café in Paris at night", "a die on a table"):
        assert english_note(query) is None, query


def test_search_by_image_finds_the_same_colour_and_stores_nothing(app: App, tmp_path: Path) -> None:
    example = write_png(tmp_path / "example.png", (30, 30, 210))
    result = app.search_image(str(example), k=1)
    assert app.image_info(result.hits[0].entry.id).path.read_bytes() == png_bytes("blue")
    assert len(app.library) == 3
    with pytest.raises(InputError):
        app.search_image(None)
    with pytest.raises(ImageError):
        app.search_image(b"GIF89a broken")


def test_search_in_an_empty_library(tmp_path: Path, colour_encoder) -> None:
    result = make_app(tmp_path, colour_encoder).search_text("red")
    assert result.hits == [] and result.library_size == 0


# ---- gallery --------------------------------------------------------------------------------------------------
def test_gallery_pages_in_id_order_with_totals(app: App) -> None:
    first = app.gallery_page(1, per_page=2)
    second = app.gallery_page(2, per_page=2)
    assert (first.page, first.pages, first.total) == (1, 2, 3)
    assert [e.id for e in first.entries + second.entries] == sorted(e.id for e in app.library)
    assert app.gallery_page(99, per_page=2).page == 2 and app.gallery_page(-3, per_page=2).page == 1
    assert app.gallery_page(None).page == 1 and app.gallery_page(2.0, per_page=2).page == 2
    with pytest.raises(InputError):
        app.gallery_page("two")


def test_image_info_and_delete(app: App) -> None:
    entry = app.gallery_page(1).entries[0]
    info = app.image_info(str(entry.id))
    assert (info.id, info.file, info.size) == (entry.id, entry.file, entry.path.stat().st_size)
    removed = app.delete_image(float(entry.id))
    assert removed.id == entry.id and not entry.path.exists()
    assert len(app.library) == 2 and entry.file not in gallery_files(app)
    with pytest.raises(UnknownImageError):
        app.image_info(entry.id)


@pytest.mark.parametrize("bad, error", [(None, InputError), ("", InputError), ("abc", InputError), (1.5, InputError),
                                        (True, InputError), (12345, UnknownImageError)])
def test_delete_with_a_bad_or_unknown_id_changes_nothing(app: App, bad, error) -> None:
    before = gallery_files(app)
    with pytest.raises(error):
        app.delete_image(bad)
    assert gallery_files(app) == before and len(app.library) == 3


# ---- library --------------------------------------------------------------------------------------------------
def test_add_images_reports_added_duplicates_near_duplicates_and_failures(app: App, tmp_path: Path) -> None:
    inbox = tmp_path / "more"
    files = [write_png(inbox / "white.png", "white"),
             write_png(inbox / "red-again.png", "red"),                 # same bytes as the stored red image
             write_png(inbox / "almost-green.png", (22, 182, 18)),      # a few levels off the stored green
             inbox / "notes.png"]
    files[-1].write_bytes(b"not an image at all")
    steps: list[tuple[int, int]] = []
    report = app.add_images([str(f) for f in files], progress=lambda done, total: steps.append((done, total)))
    assert [r.name for r in report.added] == ["white.png", "almost-green.png"]
    assert [r.name for r in report.duplicates] == ["red-again.png"]
    assert [r.name for r in report.near_duplicates] == ["almost-green.png"]
    assert [r.name for r in report.failed] == ["notes.png"] and "not an image" in report.failed[0].error
    assert steps and steps[-1][0] == steps[-1][1]
    assert len(app.library) == 5


def test_add_images_needs_files(app: App) -> None:
    with pytest.raises(InputError, match="no files"):
        app.add_images([])
    with pytest.raises(InputError):
        app.add_images(None)


def test_concurrent_writes_keep_every_image(tmp_path: Path, colour_encoder) -> None:
    app = make_app(tmp_path, colour_encoder)
    colours = ["red", "green", "blue", "cyan", "magenta", "yellow"]
    assert not run_in_threads(lambda colour: app.classify(png_bytes(colour), "red, blue"), [(c,) for c in colours])
    assert len(app.library) == len(colours) and len({e.id for e in app.library}) == len(colours)
    assert app.check().ok


def test_classify_with_saving_and_delete_do_not_wait_for_a_bulk_upload(app: App, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    files = [write_png(tmp_path / "bulk" / f"{k}.png", (k * 6, 255 - k * 6, (k * 37) % 256)) for k in range(40)]
    original = app.encoder.encode_pixels
    bulk_started = threading.Event()

    def slow_batches(pixels):  # the bulk upload's batches are slow; a single photo is not
        if len(pixels) > 1:
            bulk_started.set()
            time.sleep(0.08 * len(pixels))
        return original(pixels)

    monkeypatch.setattr(app.encoder, "encode_pixels", slow_batches)
    reports = []
    uploader = threading.Thread(target=lambda: reports.append(app.add_images(files)))
    uploader.start()
    assert bulk_started.wait(10)
    start = time.monotonic()
    result = app.classify(png_bytes("cyan"), "cyan, red")  # save=True, the default
    classified = time.monotonic() - start
    deleted = app.delete_image(1)
    both = time.monotonic() - start
    still_uploading = uploader.is_alive()
    uploader.join(60)
    assert still_uploading and classified < 1.5 and both < 2.0, (classified, both)
    assert result.scores[0].label == "cyan" and result.saved.status == "added" and deleted.id == 1
    assert len(reports[0].added) == 40 and len(app.library) == 3 + 1 - 1 + 40 and app.check().ok


def test_stats_check_repair_rebuild(app: App) -> None:
    stats = app.stats()
    assert (stats.count, stats.model, stats.dim) == (3, "color-test", app.encoder.dim) and stats.file_size > 0
    assert app.check().ok
    victim = app.gallery_page(1).entries[0]
    victim.path.unlink()  # someone deleted a gallery file by hand
    problems = app.check().problems
    assert problems and any(p.id == victim.id for p in problems)
    assert app.repair().actions
    assert app.check().ok and len(app.library) == 2
    app.rebuild()
    assert app.check().ok and len(app.library) == 2


def test_from_settings_loads_once_and_logs_model_device_and_count(tmp_path: Path, tiny_checkpoint: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    from clip_app.config import Settings

    settings = Settings(model=str(tiny_checkpoint), device="cpu", gallery_dir=tmp_path / "g",
                        library_file=tmp_path / "lib.pth")
    with caplog.at_level(logging.INFO, logger="clip_app.service"):
        app = App.from_settings(settings)
    line = [r.getMessage() for r in caplog.records if r.name == "clip_app.service"][-1]
    assert "tiny-clip.pt" in line and "cpu" in line and "0 images" in line
    assert app.label_sets.path == tmp_path / "label_sets.json"


# ---- pure helpers -----------------------------------------------------------------------------------------------
def test_parse_and_format_sizes() -> None:
    assert parse_size("20MB") == 20 * 1024 * 1024 == parse_size(" 20 mb ")
    assert parse_size("500KB") == 500 * 1024 and parse_size("123") == 123 and parse_size(7) == 7
    for bad in ("", "MB", "lots", "0MB", "-5"):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert format_size(512) == "512 B" and format_size(1536) == "1.5 KB" and format_size(20 << 20) == "20.0 MB"
