"""Percentiles and the confidence rule (pure): against brute force, and the rule's edge cases."""

from __future__ import annotations

import pytest
import torch

from clip_app.search import ConfidenceRule, confidence, percentiles, scan


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
    found = scan(query, rows, ids, 12, allowed)
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
