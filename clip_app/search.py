"""Similarity search (pure): top-k rows of a feature matrix for a query feature, ties broken by the lower ID."""

from __future__ import annotations

import torch

#: Bound used for |float16 score - exact score| of a unit row and a unit query: rounding the query to float16
#: moves a score by at most 2^-11, rounding the score itself by at most 2^-12; four times that, for safety.
HALF_SCORE_MARGIN = 3e-3


def top_k(query: torch.Tensor, features: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best k rows for one unit query [D] against unit rows [N, D] with IDs [N].

    Returns (scores [k'], row indices [k']) with k' = min(k, N), best first; equal scores go to the lower ID.
    Float16 rows (as the library stores them) are scanned in float16, which reads half the bytes, and the few
    rows that can be in the top k are then scored exactly in float32: the same result as float32 rows.
    """
    n = features.shape[0]
    k = min(int(k), n)
    if k <= 0:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    query = query.reshape(-1)
    if features.dtype == torch.float16:
        rows = half_candidates(query, features, k)
        scores = features[rows].float() @ query.float()
        chosen = best_rows(scores, ids[rows], k)
        return scores[chosen], rows[chosen]
    scores = features @ query.to(features.dtype)
    chosen = best_rows(scores, ids, k)
    return scores[chosen].float(), chosen


def half_candidates(query: torch.Tensor, features: torch.Tensor, k: int) -> torch.Tensor:
    """Row indices [M] (M >= k) that hold every row of the exact top k of float16 rows [N, D], and all its ties.

    If C is the k-th best float16 score and S the k-th best exact one, C <= S + m (m = HALF_SCORE_MARGIN), so every
    row scoring >= S exactly scores >= C - 2m in float16.
    """
    coarse = features @ query.to(torch.float16)  # [N], float16 arithmetic: memory bound, half the bytes
    kth = float(torch.topk(coarse, k, sorted=False).values.min())
    return torch.nonzero(coarse >= kth - 2 * HALF_SCORE_MARGIN).flatten()


def best_rows(scores: torch.Tensor, ids: torch.Tensor, k: int) -> torch.Tensor:
    """Positions [k] of the k best scores [N] (k <= N), best first; equal scores go to the lower ID [N]."""
    best = torch.topk(scores, k, sorted=True)
    kth = best.values[-1]
    # Rows tied with the k-th score may have been cut arbitrarily: gather every tie, then order by (-score, id).
    candidates = torch.nonzero(scores >= kth).flatten() if bool((scores == kth).sum() > 1) else best.indices
    cand_scores = scores[candidates].float()
    order = sorted(range(len(candidates)), key=lambda i: (-float(cand_scores[i]), int(ids[candidates[i]])))[:k]
    return candidates[torch.tensor(order, dtype=torch.long)]
