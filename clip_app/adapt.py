"""Few-shot heads over frozen CLIP features (pure): prototype blend, training-free Tip-Adapter, linear probe.

Every head turns unit image features [N, D] into logits [N, C]. Inputs are the zero-shot text classifier
W [D, C] (unit columns, clip_app.classify.build_classifier) and the examples: unit features [M, D] with their
label indices [M]. Hyper-parameters are chosen on the examples only (leave-one-out for the prototype blend and
Tip-Adapter, stratified k-fold for the linear probe); when some label has a single example there is nothing to
hold out, and the documented fixed defaults below are used. Nothing here ever sees an evaluation split.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch

from .classify import LOGIT_SCALE

log = logging.getLogger(__name__)

METHODS = ("zeroshot", "prototype", "tip", "linear")

#: prototype blend: weight of the text column (1 = zero-shot, 0 = example mean only)
DEFAULT_LAMBDA = 0.5
LAMBDA_GRID = tuple(i / 10 for i in range(11))
#: Tip-Adapter: alpha (weight of the cache) and beta (sharpness); 1.0 and 5.5 are the paper's ImageNet defaults
DEFAULT_ALPHA = 1.0
DEFAULT_BETA = 5.5
ALPHA_GRID = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0)
BETA_GRID = (1.0, 2.0, 3.5, 5.5, 7.5, 10.0)
#: linear probe: sklearn's C (objective 0.5 |W|^2 + C sum of cross-entropies) and the WiSE weight t of the probe
#: (head = (1 - t) * zero-shot + t * probe, in logit units)
DEFAULT_C = 10.0
C_GRID = (0.1, 1.0, 10.0, 100.0)
DEFAULT_WISE = 0.5
WISE_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
MAX_FOLDS = 3


class AdaptError(ValueError):
    """Examples that cannot be used (shapes disagree, a label index out of range, no examples for a method)."""


class Head(Protocol):
    """A classifier over unit image features."""

    method: str
    params: dict[str, float]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Unit features [N, D] -> logits [N, C]."""
        ...


@dataclass(frozen=True)
class Examples:
    """Labelled example features: unit rows [M, D], label indices [M] in 0..n_classes-1."""

    features: torch.Tensor
    labels: torch.Tensor
    n_classes: int

    def __post_init__(self) -> None:
        if self.features.dim() != 2 or self.labels.dim() != 1 or len(self.features) != len(self.labels):
            raise AdaptError(f"examples: features [M, D] and labels [M] expected, got {tuple(self.features.shape)} "
                             f"and {tuple(self.labels.shape)}")
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= self.n_classes):
            raise AdaptError(f"example labels must lie in 0..{self.n_classes - 1}")

    def counts(self) -> torch.Tensor:
        """Examples per label [C]."""
        return torch.bincount(self.labels, minlength=self.n_classes)

    def tunable(self) -> bool:
        """True when every label that has examples has at least two (one can be held out)."""
        counts = self.counts()
        present = counts[counts > 0]
        return len(present) >= 1 and int(present.min()) >= 2

    def subset(self, index: torch.Tensor) -> "Examples":
        """The examples at these positions [K]."""
        return Examples(self.features[index], self.labels[index], self.n_classes)


@dataclass(frozen=True)
class LinearHead:
    """logits = f @ weight + bias: weight [D, C] in logit units, bias [C]."""

    method: str
    weight: torch.Tensor
    bias: torch.Tensor
    params: dict[str, float] = field(default_factory=dict)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Unit features [N, D] -> logits [N, C]."""
        return features.to(self.weight.dtype) @ self.weight + self.bias


@dataclass(frozen=True)
class TipHead:
    """Tip-Adapter: logits = 100 f W + alpha exp(-beta (1 - f K^T)) V; K keys [M, D], V one-hot values [M, C]."""

    text_weights: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    alpha: float
    beta: float
    method: str = "tip"

    @property
    def params(self) -> dict[str, float]:
        return {"alpha": self.alpha, "beta": self.beta}

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Unit features [N, D] -> logits [N, C]."""
        features = features.float()
        return tip_logits(LOGIT_SCALE * features @ self.text_weights, features @ self.keys.T, self.values,
                          self.alpha, self.beta)


def tip_logits(zero_shot: torch.Tensor, affinity: torch.Tensor, values: torch.Tensor, alpha: float,
               beta: float) -> torch.Tensor:
    """Zero-shot logits [N, C] + alpha * exp(-beta (1 - affinity [N, M])) @ values [M, C] -> [N, C]."""
    return zero_shot + alpha * torch.exp(-beta * (1.0 - affinity)) @ values


# ---- zero-shot and prototype blend -------------------------------------------------------------------------
def zero_shot_head(text_weights: torch.Tensor) -> LinearHead:
    """CLIP's own head: 100 * W [D, C], no bias."""
    weights = text_weights.float()
    return LinearHead("zeroshot", LOGIT_SCALE * weights, torch.zeros(weights.shape[1]))


def blend_columns(text_weights: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, lam: float) -> torch.Tensor:
    """Columns [D, C] normalise(lam * W[:, c] + (1 - lam) * mean_c) from per-label feature sums [C, D] and counts
    [C]; a label without examples keeps its text column."""
    text = text_weights.float()
    has = (counts > 0).float()
    means = sums / counts.clamp_min(1).unsqueeze(1)  # [C, D]
    mix = (lam + (1.0 - lam) * (1.0 - has)) * text + ((1.0 - lam) * has).unsqueeze(0) * means.T
    return mix / mix.norm(dim=0, keepdim=True).clamp_min(1e-12)


def prototype_head(text_weights: torch.Tensor, examples: Examples, lam: float | None = None) -> LinearHead:
    """Prototype blend [D, C] scaled to logits; lam None: chosen by leave-one-out (DEFAULT_LAMBDA if untunable)."""
    _check(text_weights, examples)
    if lam is None:
        lam = choose_lambda(text_weights, examples)
    sums = torch.zeros(examples.n_classes, text_weights.shape[0]).index_add_(0, examples.labels,
                                                                            examples.features.float())
    columns = blend_columns(text_weights, sums, examples.counts(), lam)
    return LinearHead("prototype", LOGIT_SCALE * columns, torch.zeros(examples.n_classes), {"lambda": lam})


def choose_lambda(text_weights: torch.Tensor, examples: Examples, grid: Sequence[float] = LAMBDA_GRID) -> float:
    """The blend weight with the best leave-one-out accuracy (then cross-entropy) over the examples.

    Every column is normalise(lam t + (1 - lam) m), so each score is (lam f.t + (1 - lam) f.m) / |lam t + (1 - lam)
    m|: the dot products are computed once and each grid value costs O(M C)."""
    if not examples.tunable():
        return DEFAULT_LAMBDA
    feats, labels = examples.features.float(), examples.labels
    text = text_weights.float()  # [D, C]
    counts = examples.counts()
    has = counts > 0
    sums = torch.zeros(examples.n_classes, feats.shape[1]).index_add_(0, labels, feats)
    means = sums / counts.clamp_min(1).unsqueeze(1)  # [C, D]
    f_t, f_m = feats @ text, feats @ means.T  # [M, C]
    t_t, t_m, m_m = (text * text).sum(dim=0), (text.T * means).sum(dim=1), (means * means).sum(dim=1)  # [C]
    rows = torch.arange(len(labels))
    own_m = (sums[labels] - feats) / (counts[labels] - 1).unsqueeze(1)  # [M, D]: each example's class without it
    own_f_m = (feats * own_m).sum(dim=1)  # [M]
    own_t_m = (text.T[labels] * own_m).sum(dim=1)
    own_m_m = (own_m * own_m).sum(dim=1)
    own_f_t = f_t[rows, labels]
    scores = []
    for lam in grid:
        mu = 1.0 - lam
        norms = torch.sqrt((lam * lam * t_t + 2 * lam * mu * t_m + mu * mu * m_m).clamp_min(1e-24))  # [C]
        logits = torch.where(has, (lam * f_t + mu * f_m) / norms, f_t / t_t.sqrt())  # no examples: text only
        own_norm = torch.sqrt((lam * lam * t_t[labels] + 2 * lam * mu * own_t_m + mu * mu * own_m_m).clamp_min(1e-24))
        logits[rows, labels] = (lam * own_f_t + mu * own_f_m) / own_norm
        scores.append(_score(LOGIT_SCALE * logits, labels))
    return float(grid[_best(scores)])


# ---- Tip-Adapter -------------------------------------------------------------------------------------------
def tip_head(text_weights: torch.Tensor, examples: Examples, alpha: float | None = None,
             beta: float | None = None) -> TipHead:
    """Training-free Tip-Adapter over the examples; alpha/beta None: chosen by leave-one-out (defaults if untunable)."""
    _check(text_weights, examples)
    if alpha is None or beta is None:
        best_alpha, best_beta = choose_tip(text_weights, examples)
        alpha = best_alpha if alpha is None else alpha
        beta = best_beta if beta is None else beta
    values = torch.nn.functional.one_hot(examples.labels, examples.n_classes).float()
    return TipHead(text_weights.float(), examples.features.float(), values, float(alpha), float(beta))


def choose_tip(text_weights: torch.Tensor, examples: Examples, alphas: Sequence[float] = ALPHA_GRID,
               betas: Sequence[float] = BETA_GRID) -> tuple[float, float]:
    """(alpha, beta) with the best leave-one-out accuracy (then cross-entropy): each example's own cache entry is
    left out of its logits."""
    if not examples.tunable():
        return DEFAULT_ALPHA, DEFAULT_BETA
    feats, labels = examples.features.float(), examples.labels
    values = torch.nn.functional.one_hot(labels, examples.n_classes).float()
    zero_shot = LOGIT_SCALE * feats @ text_weights.float()
    affinity = feats @ feats.T  # [M, M]
    eye = torch.eye(len(labels), dtype=torch.bool)
    pairs, scores = [], []
    for beta in betas:
        cache = torch.exp(-beta * (1.0 - affinity)).masked_fill(eye, 0.0) @ values  # [M, C], self left out
        for alpha in alphas:
            pairs.append((float(alpha), float(beta)))
            scores.append(_score(zero_shot + alpha * cache, labels))
    return pairs[_best(scores)]


# ---- linear probe ------------------------------------------------------------------------------------------
def fit_logistic(features: torch.Tensor, labels: torch.Tensor, n_classes: int, c: float,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None, max_iter: int = 100,
                 tol: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression as scikit-learn's (minimise 0.5 |W|^2 + c * sum of cross-entropies, bias
    not penalised), by L-BFGS in float32 from `init` (or zeros) until the gradient's largest entry is under `tol`:
    features [M, D], labels [M] -> (weight [D, C], bias [C]).

    The optimum's weight lies in the span of the examples (the gradient of the loss does, and the penalty pulls
    the rest to zero), so when M + C < D the problem is solved in an orthonormal basis of that span and the
    start: the same minimum at a fraction of the cost."""
    x = features.float()
    m, d = x.shape
    w0 = init[0].float() if init is not None else torch.zeros(d, n_classes)
    b0 = init[1].float() if init is not None else torch.zeros(n_classes)
    basis = None
    if m + n_classes < d:
        basis = torch.linalg.qr(torch.cat([x.T, w0], dim=1)).Q  # [D, r]: spans the examples and the start
        x, w0 = x @ basis, basis.T @ w0
    r = x.shape[1]
    onehot = torch.nn.functional.one_hot(labels, n_classes).float()
    penalty = 0.5 / (c * m)  # the objective divided by c * m: same minimum, gradients of order one
    flat = torch.cat([w0.reshape(-1), b0]).contiguous().requires_grad_(True)
    optimizer = torch.optim.LBFGS([flat], lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-10,
                                  history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:  # loss and gradient by hand: no autograd graph per evaluation
        weight, bias = flat.detach()[: r * n_classes].view(r, n_classes), flat.detach()[r * n_classes:]
        logits = x @ weight + bias
        log_probs = logits.log_softmax(dim=1)
        loss = -(log_probs * onehot).sum() / m + penalty * (weight * weight).sum()
        residual = (log_probs.exp() - onehot) / m  # [M, C]
        flat.grad = torch.cat([(x.T @ residual + 2 * penalty * weight).reshape(-1), residual.sum(dim=0)])
        return loss

    optimizer.step(closure)
    weight, bias = flat.detach()[: r * n_classes].view(r, n_classes), flat.detach()[r * n_classes:]
    if basis is not None:
        weight = basis @ weight
    return weight.contiguous().clone(), bias.clone()


def wise_head(text_weights: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, t: float) -> LinearHead:
    """WiSE weight ensembling: (1 - t) * 100 W_text + t * probe weight [D, C], bias t * probe bias [C]."""
    mixed = (1.0 - t) * LOGIT_SCALE * text_weights.float() + t * weight
    return LinearHead("linear", mixed, t * bias)


def linear_probe(text_weights: torch.Tensor | None, examples: Examples, c: float | None = None,
                 wise: float | None = None, init_zero_shot: bool = True) -> LinearHead:
    """Logistic-regression head; c (regularisation) and wise (the probe's share t) None: chosen by stratified
    k-fold on the examples (defaults if untunable). With text_weights, L-BFGS starts from the zero-shot head
    and the result is WiSE-mixed with it; without, a plain probe (t = 1)."""
    if text_weights is not None:
        _check(text_weights, examples)
    counts = examples.counts()
    if int(counts.min()) < 1:
        raise AdaptError("the linear probe needs at least one example of every label")
    if text_weights is None:
        wise = 1.0
    if c is None or wise is None:
        best_c, best_t = choose_linear(text_weights, examples, init_zero_shot,
                                       wise_grid=WISE_GRID if wise is None else (wise,))
        c = best_c if c is None else c
        wise = best_t if wise is None else wise
    init = _zero_shot_init(text_weights, examples.n_classes) if init_zero_shot and text_weights is not None else None
    weight, bias = fit_logistic(examples.features, examples.labels, examples.n_classes, c, init)
    if text_weights is None:
        return LinearHead("linear", weight, bias, {"C": c, "wise": 1.0})
    head = wise_head(text_weights, weight, bias, wise)
    return LinearHead("linear", head.weight, head.bias, {"C": float(c), "wise": float(wise)})


def choose_linear(text_weights: torch.Tensor | None, examples: Examples, init_zero_shot: bool = True,
                  c_grid: Sequence[float] = C_GRID, wise_grid: Sequence[float] = WISE_GRID) -> tuple[float, float]:
    """(c, t) with the best stratified k-fold accuracy (then cross-entropy) pooled over the held-out examples."""
    if not examples.tunable() or int(examples.counts().min()) < 2:
        return DEFAULT_C, (DEFAULT_WISE if text_weights is not None else 1.0)
    folds = stratified_folds(examples.labels, min(MAX_FOLDS, int(examples.counts().min())))
    if text_weights is None:
        wise_grid = (1.0,)
    held_logits = {(c, t): torch.empty(len(examples.labels), examples.n_classes) for c in c_grid for t in wise_grid}
    init = _zero_shot_init(text_weights, examples.n_classes) if init_zero_shot and text_weights is not None else None
    for held in folds:
        keep = torch.ones(len(examples.labels), dtype=torch.bool)
        keep[held] = False
        train = examples.subset(keep.nonzero().flatten())
        start = init
        for c in sorted(c_grid):  # warm start: each solution starts the next, weaker regularisation
            weight, bias = fit_logistic(train.features, train.labels, train.n_classes, c, start)
            start = (weight, bias)
            for t in wise_grid:
                head = (wise_head(text_weights, weight, bias, t) if text_weights is not None
                        else LinearHead("linear", weight, bias))
                held_logits[(c, t)][held] = head.logits(examples.features[held])
    keys = list(held_logits)
    best = keys[_best([_score(held_logits[k], examples.labels) for k in keys])]
    return float(best[0]), float(best[1])


def stratified_folds(labels: torch.Tensor, k: int) -> list[torch.Tensor]:
    """k folds of positions [M] with each label spread evenly (deterministic: the i-th example of a label goes to
    fold i mod k)."""
    fold_of = torch.empty(len(labels), dtype=torch.long)
    for label in labels.unique():
        where = (labels == label).nonzero().flatten()
        fold_of[where] = torch.arange(len(where)) % k
    return [(fold_of == i).nonzero().flatten() for i in range(k)]


# ---- query refinement --------------------------------------------------------------------------------------
#: Rocchio weights: the query, the mean of the positive examples, the mean of the negative ones (the classic
#: 1 / 0.75 / 0.15 of Rocchio's relevance feedback)
ROCCHIO = (1.0, 0.75, 0.15)


def rocchio(query: torch.Tensor | None, positives: torch.Tensor, negatives: torch.Tensor | None = None,
            weights: tuple[float, float, float] = ROCCHIO) -> torch.Tensor:
    """A refined unit query [D]: normalise(a q + b mean(positives [P, D]) - c mean(negatives [Q, D])); no text
    query: the positives alone ("more like these")."""
    a, b, c = weights
    parts = []
    if query is not None:
        parts.append(a * query.float().reshape(-1))
    if len(positives):
        parts.append(b * positives.float().mean(dim=0))
    if negatives is not None and len(negatives):
        parts.append(-c * negatives.float().mean(dim=0))
    if not parts or (query is None and not len(positives)):
        raise AdaptError("refining a search needs a query or at least one positive example")
    refined = torch.stack(parts).sum(dim=0)
    return refined / refined.norm().clamp_min(1e-12)


# ---- dispatch ----------------------------------------------------------------------------------------------
def adapt(method: str, text_weights: torch.Tensor, examples: Examples | None) -> Head:
    """The head of a method (one of METHODS) with hyper-parameters chosen on the examples only."""
    if method == "zeroshot" or examples is None or len(examples.labels) == 0:
        return zero_shot_head(text_weights)
    if method == "prototype":
        return prototype_head(text_weights, examples)
    if method == "tip":
        return tip_head(text_weights, examples)
    if method == "linear":
        return linear_probe(text_weights, examples)
    raise AdaptError(f"unknown few-shot method {method!r}: choose from {', '.join(METHODS)}")


def parse_methods(text: str) -> tuple[str, ...]:
    """'zeroshot,tip' -> ('zeroshot', 'tip') in METHODS order; AdaptError naming an unknown method."""
    wanted = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = sorted(set(wanted) - set(METHODS))
    if unknown or not wanted:
        raise AdaptError(f"unknown method(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(METHODS)}")
    return tuple(m for m in METHODS if m in wanted)


# ---- helpers -----------------------------------------------------------------------------------------------
def _zero_shot_init(text_weights: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    return LOGIT_SCALE * text_weights.float(), torch.zeros(n_classes)


def _check(text_weights: torch.Tensor, examples: Examples) -> None:
    if text_weights.dim() != 2 or text_weights.shape[1] != examples.n_classes:
        raise AdaptError(f"text classifier [D, {examples.n_classes}] expected, got {tuple(text_weights.shape)}")
    if len(examples.labels) and examples.features.shape[1] != text_weights.shape[0]:
        raise AdaptError(f"example features are {examples.features.shape[1]}-d but the text classifier is "
                         f"{text_weights.shape[0]}-d")


def _score(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(accuracy, -mean cross-entropy): larger is better, compared in that order."""
    accuracy = float((logits.argmax(dim=1) == labels).float().mean())
    loss = float(torch.nn.functional.cross_entropy(logits.float(), labels))
    return accuracy, -loss if math.isfinite(loss) else -math.inf


def _best(scores: Sequence[tuple[float, float]]) -> int:
    """Position of the best score (ties: the first)."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))
