"""Similarity search (pure): top-k rows of a feature matrix for a query feature, ties broken by the lower ID."""

from __future__ import annotations

import torch


def top_k(query: torch.Tensor, features: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best k rows for one unit query [D] against unit rows [N, D] with IDs [N].

    Returns (scores [k'], row indices [k']) with k' = min(k, N), best first; equal scores go to the lower ID.
    """
    n = features.shape[0]
    k = min(int(k), n)
    if k <= 0:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    scores = features @ query.reshape(-1).to(features.dtype)
    best = torch.topk(scores, k, sorted=True)
    kth = best.values[-1]
    # Rows tied with the k-th score may have been cut arbitrarily: gather every tie, then order by (-score, id).
    candidates = torch.nonzero(scores >= kth).flatten() if bool((scores == kth).sum() > 1) else best.indices
    cand_scores = scores[candidates].float()
    order = sorted(range(len(candidates)), key=lambda i: (-float(cand_scores[i]), int(ids[candidates[i]])))[:k]
    chosen = candidates[torch.tensor(order, dtype=torch.long)]
    return scores[chosen].float(), chosen
