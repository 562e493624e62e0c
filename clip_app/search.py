"""Similarity search (pure): top-k rows of a feature matrix for a query feature, ties broken by the lower ID;
percentiles and the confidence rule from the same scan's scores."""

from __future__ import annotations

from dataclasses import dataclass

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
    found = scan_rows(query, features, ids, k)
    return found.scores, found.rows


@dataclass(frozen=True)
class Scan:
    """One exact scan: the best rows and the score of every row (what percentiles and confidence are read from)."""

    scores: torch.Tensor  # float32 [k'], best first
    rows: torch.Tensor  # int64 [k'], row indices of the results
    every: torch.Tensor  # [N], the scan's score of every row (float16 for float16 rows)
    above: torch.Tensor | None = None  # int64 [M]: rows holding every row that scores above any result (or None)


def scan_rows(query: torch.Tensor, features: torch.Tensor, ids: torch.Tensor, k: int,
         allowed: torch.Tensor | None = None) -> Scan:
    """top_k plus the scan's score of every row; `allowed` (bool [N]) limits the results to some rows (a tag),
    the scores of every row are still returned. The full scan is what top_k computes anyway."""
    n = features.shape[0]
    k = min(int(k), n if allowed is None else int(allowed.sum()))
    query = query.reshape(-1)
    if k <= 0:
        every = features @ query.to(features.dtype) if n else torch.empty(0)
        return Scan(torch.empty(0), torch.empty(0, dtype=torch.long), every)
    if features.dtype == torch.float16:
        coarse = features @ query.to(torch.float16)  # [N], float16 arithmetic: memory bound, half the bytes
        pool = coarse if allowed is None else coarse.masked_fill(~allowed, float("-inf"))
        rows = candidates_from_scores(pool, k)
        if allowed is not None:
            rows = rows[allowed[rows]]
        scores = features[rows].float() @ query.float()
        chosen = best_rows(scores, ids[rows], k)
        # without `allowed`, every row scoring above a result in the scan is a candidate (see half_candidates)
        return Scan(scores[chosen], rows[chosen], coarse, rows if allowed is None else None)
    every = features @ query.to(features.dtype)
    if allowed is None:
        chosen = best_rows(every, ids, k)
    else:
        allowed_rows = torch.nonzero(allowed).flatten()
        chosen = allowed_rows[best_rows(every[allowed_rows], ids[allowed_rows], k)]
    return Scan(every[chosen].float(), chosen, every)


def half_candidates(query: torch.Tensor, features: torch.Tensor, k: int) -> torch.Tensor:
    """Row indices [M] (M >= k) that hold every row of the exact top k of float16 rows [N, D], and all its ties.

    If C is the k-th best float16 score and S the k-th best exact one, C <= S + m (m = HALF_SCORE_MARGIN), so every
    row scoring >= S exactly scores >= C - 2m in float16.
    """
    return candidates_from_scores(features @ query.to(torch.float16), k)


def candidates_from_scores(coarse: torch.Tensor, k: int) -> torch.Tensor:
    """Row indices [M] (M >= k) within 2 * HALF_SCORE_MARGIN of the k-th best float16 score [N] (see
    half_candidates)."""
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


def percentiles(found: Scan) -> list[float]:
    """Percentile of each result within the gallery for this query: 100 x the share of the scan's scores [N] that
    are at most the result's own (the gallery's best image is at 100). Counted as N minus the rows scoring above
    it, which all lie among the scan's candidates when it has them (no second pass over N), else over all rows."""
    n = int(found.every.shape[0])
    if n == 0 or len(found.rows) == 0:
        return []
    pool = found.every if found.above is None else found.every[found.above]
    own = found.every[found.rows]
    above = (pool.float().unsqueeze(0) > own.float().unsqueeze(1)).sum(dim=1)  # [k]
    return [100.0 * (n - int(a)) / n for a in above.tolist()]


@dataclass(frozen=True)
class ConfidenceRule:
    """When a search counts as confident (see docs/search-confidence.md for the reasoning behind the defaults).

    min_z: the best score must stand at least this many standard deviations above the mean of the query's scores
    over the whole gallery (gallery-relative distinctiveness). min_margin: the best image must match the query by at
    least this much more cosine than it matches the neutral prompts (text queries). min_gallery: below this many
    images a mean and standard deviation say little, so only the margin decides."""

    min_z: float = 2.0
    min_margin: float = 0.01
    min_gallery: int = 10


@dataclass(frozen=True)
class Confidence:
    """The verdict on one search: confident or not, why, and the two measures."""

    confident: bool
    reason: str
    z: float | None  # None when the gallery is below min_gallery (or empty)
    margin: float | None  # None for an image query (the neutral prompts are captions) or an empty gallery


def confidence(all_scores: torch.Tensor, best: float | None, neutral_of_best: float | None,
               rule: ConfidenceRule = ConfidenceRule()) -> Confidence:
    """Judge a search from its scan's scores [N], its best score, and the best image's cosine with the neutral bank
    (None for an image query): confident when every applicable test passes; the reason names the failing one."""
    n = int(all_scores.shape[0])
    if n == 0 or best is None:
        return Confidence(False, "the library is empty", None, None)
    z = None
    if n >= rule.min_gallery:
        std, mean = torch.std_mean(all_scores.float(), correction=0)
        z = (float(best) - float(mean)) / float(std) if float(std) > 1e-6 else 0.0
    margin = None if neutral_of_best is None else float(best) - float(neutral_of_best)
    failures = []
    if z is not None and z < rule.min_z:
        failures.append(f"the best match is not distinctive: it stands {z:.1f} standard deviations above this "
                        f"query's scores over the gallery (a confident match needs {rule.min_z:g})")
    if margin is not None and margin < rule.min_margin:
        failures.append(f"the query describes the best match no better than a neutral caption such as 'a photo.' "
                        f"(margin {margin:+.3f}, a confident match needs {rule.min_margin:+.3f})")
    if failures:
        return Confidence(False, "; ".join(failures), z, margin)
    parts = []
    if z is not None:
        parts.append(f"the best match stands {z:.1f} standard deviations above this query's scores over the gallery")
    else:
        parts.append(f"the gallery has {n} image{'' if n == 1 else 's'} (fewer than {rule.min_gallery}), so only the "
                     "margin was checked")
    if margin is not None:
        parts.append(f"it beats the neutral prompts by {margin:+.3f}")
    else:
        parts.append("image query: the neutral-prompt margin applies to text queries only")
    return Confidence(True, "; ".join(parts), z, margin)
