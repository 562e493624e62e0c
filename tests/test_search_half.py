"""top_k over float16 rows (the library's stored precision): scanned in float16, then exact; the same answer as
the float32 scan of the same values."""

import torch

from clip_app.search import HALF_SCORE_MARGIN, half_candidates, top_k


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    rows = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return (rows / rows.norm(dim=1, keepdim=True)).half()


def test_float16_rows_give_exactly_the_float32_answer():
    rows = unit_rows(20_000, 64, seed=1)
    ids = torch.arange(100, 100 + len(rows))
    for seed in range(5):
        query = unit_rows(1, 64, seed=50 + seed)[0].float()
        scores, picked = top_k(query, rows, ids, 12)
        want_scores, want = top_k(query, rows.float(), ids, 12)
        assert picked.tolist() == want.tolist()
        assert scores.dtype == torch.float32
        torch.testing.assert_close(scores, want_scores, atol=1e-6, rtol=0)  # not rounded to float16


def test_near_ties_below_float16_resolution_are_ordered_exactly():
    base = torch.nn.functional.normalize(torch.randn(1, 256, generator=torch.Generator().manual_seed(3)), dim=1)
    noise = torch.randn(400, 256, generator=torch.Generator().manual_seed(4)) * 2e-3
    rows = torch.nn.functional.normalize(base + noise, dim=1).half()  # 400 rows with scores within ~1e-3
    ids = torch.randperm(400, generator=torch.Generator().manual_seed(5)) + 1
    query = base[0]
    _, picked = top_k(query, rows, ids, 10)
    _, want = top_k(query, rows.float(), ids, 10)
    assert picked.tolist() == want.tolist()


def test_exact_ties_still_go_to_the_lower_id():
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]).half()
    ids = torch.tensor([30, 5, 7, 20])
    _, picked = top_k(torch.tensor([1.0, 0.0]), rows, ids, 2)
    assert ids[picked].tolist() == [7, 20]
    _, picked = top_k(torch.tensor([1.0, 0.0]), rows, ids, 9)
    assert ids[picked].tolist() == [7, 20, 30, 5]


def test_candidates_are_few_and_hold_the_top_k():
    rows = unit_rows(50_000, 128, seed=6)
    query = unit_rows(1, 128, seed=7)[0].float()
    candidates = half_candidates(query, rows, 12)
    exact = rows.float() @ query
    assert set(torch.topk(exact, 12).indices.tolist()) <= set(candidates.tolist())
    assert 12 <= len(candidates) < 1000  # a small slice of the 50,000 rows is scored exactly
    assert HALF_SCORE_MARGIN > 2**-11 + 2**-12
