"""Prompt templates and ImageNet class names (data only).

Sources, shipped with the package in clip_app/data/ (copied from the project's shared reference data):
- imagenet_classnames_clip.json: the CLIP authors' curated ImageNet-1k class names in sorted-WNID order,
  as published in github.com/openai/CLIP (notebooks/Prompt_Engineering_for_ImageNet.ipynb) and distributed by
  the clip-benchmark package (clip_benchmark/datasets/en_classnames.json, key imagenet1k);
- imagenet_templates_clip.json: the CLIP authors' 80 ImageNet prompt templates, same sources;
- imagenet_ilsvrc2012_ids.tsv: ILSVRC2012 ID -> WNID (the devkit's meta.mat order).
Templates here use '{}' for the label.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

SINGLE_TEMPLATE = "a photo of a {}."

#: Chinese prompt templates, used for a Chinese label (Han characters) when a multilingual text tower is loaded and
#: the template mode is 'single' (the first) or 'ensemble' (all). Ours: written for this project, in the spirit of
#: the CLIP authors' English ImageNet templates (a photo of / a picture of / a close-up / a drawing / ...).
CHINESE_SINGLE_TEMPLATE = "一张{}的照片。"
CHINESE_TEMPLATES: tuple[str, ...] = (
    CHINESE_SINGLE_TEMPLATE,
    "{}的照片。",
    "一张{}的图片。",
    "一张清晰的{}的照片。",
    "一张模糊的{}的照片。",
    "一张{}的特写照片。",
    "一张大的{}的照片。",
    "一张小的{}的照片。",
    "一张很多{}的照片。",
    "一幅{}的画。",
    "一张{}的素描。",
    "一张{}的黑白照片。",
    "一张明亮的{}的照片。",
    "一张光线昏暗的{}的照片。",
    "一个{}的卡通图像。",
    "这是一张{}的照片。",
)


def _data_text(name: str) -> str:
    return resources.files("clip_app").joinpath("data").joinpath(name).read_text(encoding="utf-8")


@lru_cache(maxsize=None)
def imagenet_templates() -> tuple[str, ...]:
    """The 80 CLIP ImageNet templates, with '{}' where the class name goes."""
    raw = json.loads(_data_text("imagenet_templates_clip.json"))["templates"]
    return tuple(t.replace("{c}", "{}") for t in raw)


@lru_cache(maxsize=None)
def imagenet_classnames() -> tuple[str, ...]:
    """The 1000 curated CLIP class names, index = position of the WNID in sorted(WNIDs)."""
    return tuple(json.loads(_data_text("imagenet_classnames_clip.json"))["classnames"])


@lru_cache(maxsize=None)
def imagenet_ilsvrc_ids() -> dict[int, str]:
    """ILSVRC2012 ID (1..1000, the devkit's numbering) -> WNID."""
    table: dict[int, str] = {}
    for line in _data_text("imagenet_ilsvrc2012_ids.tsv").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        ilsvrc_id, wnid = line.split("\t")[:2]
        table[int(ilsvrc_id)] = wnid
    return table


@lru_cache(maxsize=None)
def imagenet_short_names() -> dict[str, str]:
    """WNID -> the short class name of the ILSVRC2012 table (underscores as spaces), e.g. 'kit fox'."""
    table: dict[str, str] = {}
    for line in _data_text("imagenet_ilsvrc2012_ids.tsv").splitlines():
        parts = line.split("\t")
        if line.startswith("#") or len(parts) < 3:
            continue
        table[parts[1]] = parts[2].strip().replace("_", " ")
    return table


@lru_cache(maxsize=None)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 WNIDs in sorted order: the class index of torchvision and of the curated names."""
    return tuple(sorted(imagenet_ilsvrc_ids().values()))


#: the named template choices (a custom template containing "{}" is accepted too) and what each means
TEMPLATE_CHOICES = {"single": "a photo of a {}.", "ensemble": "CLIP's 80 ImageNet templates"}


def templates_for(choice: str) -> tuple[str, ...]:
    """Templates for a named choice ('single', 'ensemble') or a custom template that contains '{}'."""
    if choice == "single":
        return (SINGLE_TEMPLATE,)
    if choice == "ensemble":
        return imagenet_templates()
    return (validate_template(choice),)


def chinese_templates_for(choice: str) -> tuple[str, ...] | None:
    """The Chinese templates of a named choice ('single': one, 'ensemble': all); None for a custom template."""
    if choice == "single":
        return (CHINESE_SINGLE_TEMPLATE,)
    if choice == "ensemble":
        return CHINESE_TEMPLATES
    return None


def validate_template(template: str) -> str:
    """Return a custom template if it holds exactly one '{}' placeholder, else raise ValueError."""
    template = (template or "").strip()
    if template.count("{}") != 1:
        raise ValueError(f"a custom prompt template needs exactly one '{{}}' where the label goes, e.g. "
                         f"'{SINGLE_TEMPLATE}'; got {template!r}")
    return template


def fill(template: str, label: str) -> str:
    """Put a label into a '{}' template without interpreting braces inside the label."""
    return template.replace("{}", label, 1)


def family_prompts(family: str) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """(ImageNet class names, ImageNet templates with '{}', source) for a model family: the family's own when it
    ships them (open_clip: open_clip.zero_shot_metadata, the same 80 English templates; Chinese-CLIP:
    cn_clip.eval.imagenet_zeroshot_templates, Chinese names and templates translated by the Wukong project), else
    the CLIP authors' (ours, above)."""
    if family == "open_clip":
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

        return (tuple(IMAGENET_CLASSNAMES), tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES),
                "open_clip.zero_shot_metadata")
    if family == "cn_clip":
        from cn_clip.eval.imagenet_zeroshot_templates import imagenet_classnames as names
        from cn_clip.eval.imagenet_zeroshot_templates import openai_imagenet_template

        return (tuple(names), tuple(t("{}") for t in openai_imagenet_template),
                "cn_clip.eval.imagenet_zeroshot_templates")
    return imagenet_classnames(), imagenet_templates(), "clip_app/data (the CLIP authors')"


def family_templates(choice: str, family: str = "clip") -> tuple[str, ...]:
    """templates_for() in a model family's language: Chinese-CLIP's `single` is '{}的照片。' and its `ensemble` its
    80 Chinese templates; the other families use the CLIP authors' English ones."""
    if family == "cn_clip" and choice in ("single", "ensemble"):
        templates = family_prompts("cn_clip")[1]
        return templates[:1] if choice == "single" else templates
    return templates_for(choice)
