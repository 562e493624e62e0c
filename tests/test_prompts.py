import json
from pathlib import Path

import pytest

from clip_app.prompts import (
    SINGLE_TEMPLATE,
    fill,
    imagenet_classnames,
    imagenet_ilsvrc_ids,
    imagenet_templates,
    imagenet_wnids,
    templates_for,
    validate_template,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_imagenet_data():
    names, templates, ids = imagenet_classnames(), imagenet_templates(), imagenet_ilsvrc_ids()
    assert len(names) == 1000 and names[0] == "tench" and names[1] == "goldfish"
    assert len(templates) == 80 and all(t.count("{}") == 1 for t in templates)
    assert "a bad photo of a {}." in templates
    assert len(ids) == 1000 and ids[1] == "n02119789"
    assert imagenet_wnids()[0] == "n01440764" and list(imagenet_wnids()) == sorted(ids.values())


@pytest.mark.skipif(not SHARED.exists(), reason="the team's shared reference data is not beside this clone")
def test_shipped_copy_matches_the_reference_data():
    shipped = Path(__file__).resolve().parents[1] / "clip_app" / "data"
    for name in ["imagenet_classnames_clip.json", "imagenet_templates_clip.json", "imagenet_ilsvrc2012_ids.tsv"]:
        assert (shipped / name).read_bytes() == (SHARED / name).read_bytes(), name
    assert json.loads((SHARED / "imagenet_classnames_clip.json").read_text())["classnames"][999] == \
        imagenet_classnames()[999]


def test_template_choices():
    assert templates_for("single") == (SINGLE_TEMPLATE,) == ("a photo of a {}.",)
    assert templates_for("ensemble") == imagenet_templates()
    assert templates_for("  a sketch of {}  ") == ("a sketch of {}",)


@pytest.mark.parametrize("bad", ["a photo", "", "{} and {}", "{c} photo"])
def test_custom_template_needs_one_placeholder(bad):
    with pytest.raises(ValueError, match="exactly one '{}'"):
        validate_template(bad)


def test_fill_keeps_braces_in_labels():
    assert fill("a photo of a {}.", "{weird} label") == "a photo of a {weird} label."
