"""The few-shot protocol over features (pure): k shots per class drawn from train with each seed (the same draw
for every method, nested in k), every method fitted on the shots alone and scored on all of val."""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from ...adapt import Examples, adapt

#: the default --shots and --seeds
DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SEEDS = 3


@dataclass(frozen=True)
class Draws:
    """The train positions to encode (`pool`, ascending) and, per (k, seed), the rows of the pool drawn [C*k]."""

    pool: tuple[int, ...]
    rows: dict[tuple[int, int], torch.Tensor]


def draw_shots(labels: Sequence[int], n_classes: int, k: int, seed: int) -> list[int]:
    """Positions in train of k examples per class (fewer when a class has fewer): the first k of the class's
    permutation under `seed`, so the k-shot draw holds the smaller draws of the same seed."""
    by_class: list[list[int]] = [[] for _ in range(n_classes)]
    for position, label in enumerate(labels):
        by_class[label].append(position)
    chosen: list[int] = []
    for c, positions in enumerate(by_class):
        if not positions:
            continue
        generator = torch.Generator().manual_seed(seed * 1_000_003 + c)
        order = torch.randperm(len(positions), generator=generator)[:k].tolist()
        chosen += [positions[i] for i in order]
    return chosen


def plan_draws(labels: Sequence[int], n_classes: int, shots: Sequence[int], seeds: Sequence[int]) -> Draws:
    """Every draw of the run and the union of their positions (the only train images that need features)."""
    per = {(k, s): draw_shots(labels, n_classes, k, s) for k in shots for s in seeds}
    pool = tuple(sorted({p for positions in per.values() for p in positions}))
    row_of = {p: i for i, p in enumerate(pool)}
    return Draws(pool, {key: torch.tensor([row_of[p] for p in positions], dtype=torch.long)
                        for key, positions in per.items()})


@dataclass
class Run:
    """One method at one (k, seed): top-1 on val (fraction), the hyper-parameters chosen, wall-clock and CPU seconds
    (this process, all threads) to fit and score."""

    method: str
    k: int
    seed: int
    top1: float
    params: dict[str, float]
    seconds: float
    cpu_seconds: float = 0.0


@dataclass
class Outcome:
    """Every run, the zero-shot top-1 and the seconds per method."""

    zero_shot_top1: float
    runs: list[Run] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, dict]]:
        """{method: {"<k>": {"mean", "std", "runs": [{"seed", "top1", "params", "seconds"}]}}} (fractions)."""
        out: dict[str, dict[str, dict]] = {}
        for run in self.runs:
            cell = out.setdefault(run.method, {}).setdefault(str(run.k), {"runs": []})
            cell["runs"].append({"seed": run.seed, "top1": run.top1, "params": run.params, "seconds": run.seconds})
        for cells in out.values():
            for cell in cells.values():
                values = [r["top1"] for r in cell["runs"]]
                cell["mean"] = statistics.fmean(values)
                cell["std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        return out

    def seconds_by_method(self, cpu: bool = False) -> dict[str, float]:
        """Wall-clock (or CPU) seconds of every run of each method, summed."""
        totals: dict[str, float] = {}
        for run in self.runs:
            totals[run.method] = totals.get(run.method, 0.0) + (run.cpu_seconds if cpu else run.seconds)
        return totals


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose best logit [N, C] is the label [N]."""
    return float((logits.argmax(dim=1) == labels).float().mean()) if len(labels) else float("nan")


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads set to `threads` inside the block (None or 0: left as they are), restored after."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def evaluate(text_weights: torch.Tensor, pool_features: torch.Tensor, pool_labels: torch.Tensor, draws: Draws,
             val_features: torch.Tensor, val_labels: torch.Tensor, methods: Sequence[str],
             progress: Callable[[str], None] | None = None, threads: int | None = None) -> Outcome:
    """Each method at each (k, seed) on its draw of the pool (features [P, D], labels [P]); scored on val
    (features [N, D], labels [N]) with `threads` torch threads. Val reaches only the scoring, never a fit or a
    choice."""
    with torch_threads(threads):
        return _evaluate(text_weights, pool_features, pool_labels, draws, val_features, val_labels, methods,
                         progress)


def _evaluate(text_weights: torch.Tensor, pool_features: torch.Tensor, pool_labels: torch.Tensor, draws: Draws,
              val_features: torch.Tensor, val_labels: torch.Tensor, methods: Sequence[str],
              progress: Callable[[str], None] | None) -> Outcome:
    n_classes = text_weights.shape[1]
    outcome = Outcome(top1(val_features.float() @ text_weights.float(), val_labels))
    for (k, seed), rows in sorted(draws.rows.items()):
        examples = Examples(pool_features[rows].float(), pool_labels[rows], n_classes)
        for method in methods:
            if method == "zeroshot":
                outcome.runs.append(Run(method, k, seed, outcome.zero_shot_top1, {}, 0.0))
                continue
            start, cpu = time.perf_counter(), time.process_time()
            head = adapt(method, text_weights, examples)
            accuracy = top1(head.logits(val_features), val_labels)
            outcome.runs.append(Run(method, k, seed, accuracy, dict(head.params), time.perf_counter() - start,
                                    time.process_time() - cpu))
            if progress is not None:
                progress(f"{method} {k}-shot seed {seed}: top-1 {100 * accuracy:.2f}%")
    return outcome
