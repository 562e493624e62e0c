"""Percentiles and the confidence rule (pure): against brute force, and the rule's edge cases."""

from __future__ import annotations

import pytest
import torch

from clip_app.search import ConfidenceRule, confidence, percentiles, scan_rows


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("limited", [False, True])
def test_percentiles_equal_brute_force(dtype: torch.dtype, limited: bool) -> None:
    torch.manual_seed(0)
    rows = torch.nn.functional.normalize(torch.randn(3000, 32), dim=1)
    rows[10] = rows[11]  # ties count as "at most"
    rows = rows.to(dtype)
    ids = torch.arange(1, 3001) * 3
    allowed = (torch.arange(3000) % 7 == 0) if limited else None
    query = torch.nn.functional.normalize(torch.randn(32), dim=0)
    found = scan_rows(query, rows, ids, 12, allowed)
    every = found.every.float()
    expected = [100.0 * int((every <= every[r]).sum()) / 3000 for r in found.rows]
    assert percentiles(found) == pytest.approx(expected)
    assert found.scores.tolist() == sorted(found.scores.tolist(), reverse=True)
    if limited:
        assert bool(allowed[found.rows].all())
    else:
        assert percentiles(found)[0] == 100.0


def test_confidence_needs_distinctiveness_and_a_margin() -> None:
    flat = torch.full((100,), 0.2)
    spike = flat.clone()
    spike[0] = 0.3
    rule = ConfidenceRule(min_z=2.0, min_margin=0.01, min_gallery=10)
    assert confidence(spike, 0.3, 0.2, rule).confident
    no_margin = confidence(spike, 0.3, 0.295, rule)
    assert not no_margin.confident and "neutral" in no_margin.reason and no_margin.margin == pytest.approx(0.005)
    not_distinct = confidence(flat, 0.2, 0.1, rule)
    assert not not_distinct.confident and "not distinctive" in not_distinct.reason and not_distinct.z == 0.0
    small = confidence(spike[:5], 0.3, 0.2, rule)
    assert small.confident and small.z is None and "only the margin" in small.reason
    image = confidence(spike, 0.3, None, rule)
    assert image.confident and image.margin is None
    assert not confidence(torch.empty(0), None, None, rule).confident


def test_the_thresholds_are_settings_from_flags_and_environment() -> None:
    import argparse

    from clip_app.config import Settings, add_settings_arguments

    assert Settings().confidence_rule() == ConfidenceRule(2.0, 0.01, 10) and Settings().tag_threshold == 0.25
    env = {"CLIP_APP_TAG_THRESHOLD": "0.3", "CLIP_APP_CONFIDENCE_MIN_Z": "3", "CLIP_APP_CONFIDENCE_MIN_MARGIN": "0.05",
           "CLIP_APP_CONFIDENCE_MIN_GALLERY": "20"}
    settings = Settings.from_env(env)
    assert settings.tag_threshold == 0.3 and settings.confidence_rule() == ConfidenceRule(3.0, 0.05, 20)
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    args = parser.parse_args(["--tag-threshold", "0.2", "--confidence-min-margin", "0.02"])
    flagged = Settings.from_args(args, env)
    assert flagged.tag_threshold == 0.2 and flagged.confidence_min_margin == 0.02 and flagged.confidence_min_z == 3.0
    for var, value, message in (("CLIP_APP_TAG_THRESHOLD", "1.5", "must be between -1 and 1"),
                                ("CLIP_APP_TAG_THRESHOLD", "nan", "must be between"),
                                ("CLIP_APP_CONFIDENCE_MIN_Z", "high", "must be a number")):
        with pytest.raises(ValueError, match=f"{var} {message}"):
            Settings.from_env({var: value})
    with pytest.raises(ValueError, match="--tag-threshold must be between"):
        Settings.from_args(parser.parse_args(["--tag-threshold", "-3"]), {})
