"""Figures for the performance benchmark: repeated timings summarised as median and spread, targets, the table."""

from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence


@dataclass
class Figure:
    """One measured quantity: every repeat's value, summarised by its median and spread."""

    key: str  # stable name in the JSON, e.g. "search.topk.100000"
    label: str  # what it is, for the table
    unit: str  # "s", "ms", "img/s", "x", "MB", "count"
    values: list[float]
    note: str = ""

    @property
    def median(self) -> float:
        return float(statistics.median(self.values))

    @property
    def low(self) -> float:
        return float(min(self.values))

    @property
    def high(self) -> float:
        return float(max(self.values))

    def quartiles(self) -> tuple[float, float]:
        """(q1, q3) of the values (both the median when there is one value)."""
        if len(self.values) < 2:
            return self.median, self.median
        q = statistics.quantiles(self.values, n=4, method="inclusive")
        return float(q[0]), float(q[2])

    def as_dict(self) -> dict:
        q1, q3 = self.quartiles()
        return {"label": self.label, "unit": self.unit, "median": self.median, "min": self.low, "max": self.high,
                "q1": q1, "q3": q3, "n": len(self.values), "values": [float(v) for v in self.values],
                "note": self.note}


@dataclass
class Target:
    """A target of the issue: the figure `key` compared with `limit` ('<=' or '>=')."""

    name: str
    key: str
    op: str  # "<=" or ">="
    limit: float
    value: float | None = None  # the figure's median; None when the figure is pending
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value <= self.limit if self.op == "<=" else self.value >= self.limit

    def as_dict(self) -> dict:
        return {"name": self.name, "key": self.key, "op": self.op, "limit": self.limit, "value": self.value,
                "met": self.met, "note": self.note}


@dataclass
class Results:
    """Everything one run measured: figures by key, what could not be measured and why, free-form facts."""

    figures: dict[str, Figure] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)  # section -> reason
    facts: dict[str, object] = field(default_factory=dict)

    def add(self, key: str, label: str, unit: str, values: Sequence[float], note: str = "") -> Figure:
        """Record a figure (values: one per repeat) and return it."""
        if not values:
            raise ValueError(f"figure {key} has no values")
        figure = Figure(key, label, unit, [float(v) for v in values], note)
        self.figures[key] = figure
        return figure


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of `repeats` calls of fn, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


@contextmanager
def counting(obj: Any, attribute: str, totals: dict[str, float]) -> Iterator[None]:
    """Count the calls of obj.attribute and the seconds spent in them (totals['calls'], totals['seconds'])."""
    own = attribute in vars(obj)  # a module function or an instance attribute (else a method of the class)
    original = getattr(obj, attribute)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals["calls"] = totals.get("calls", 0) + 1
            totals["seconds"] = totals.get("seconds", 0.0) + time.perf_counter() - start

    setattr(obj, attribute, wrapper)
    try:
        yield
    finally:
        if own:
            setattr(obj, attribute, original)
        else:
            delattr(obj, attribute)


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the platform has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of this process (or of process `pid`) in bytes (Linux /proc; 0 where unknown)."""
    try:
        with open(f"/proc/{pid}/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss_bytes() -> int:
    """Peak resident memory of this process in bytes (VmHWM; ru_maxrss as a fallback)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except (ImportError, OSError):
        return 0


def format_value(value: float, unit: str) -> str:
    """A value in its unit, with sensible digits (seconds shown as ms below one second)."""
    if unit == "s":
        return f"{value * 1000:.1f} ms" if abs(value) < 1.0 else f"{value:.2f} s"
    if unit == "count":
        return f"{value:.0f}"
    if unit == "x":
        return f"{value:.2f}x"
    if abs(value) >= 100:
        return f"{value:.0f} {unit}"
    return f"{value:.2f} {unit}" if abs(value) >= 1 else f"{value:.3f} {unit}"


def format_table(results: Results) -> str:
    """The figures as an aligned text table: label, median, [min .. max], n."""
    rows = [("figure", "median", "spread [min .. max]", "n")]
    for figure in results.figures.values():
        spread = (f"[{format_value(figure.low, figure.unit)} .. {format_value(figure.high, figure.unit)}]"
                  if len(figure.values) > 1 else "")
        rows.append((figure.label, format_value(figure.median, figure.unit), spread, str(len(figure.values))))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for index, row in enumerate(rows):
        lines.append(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]:>{widths[3]}}")
        if index == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def format_targets(targets: Sequence[Target], figures: dict[str, Figure]) -> str:
    """One line per target: MET / MISSED / PENDING, the measured median and the limit."""
    lines = []
    for target in targets:
        unit = figures[target.key].unit if target.key in figures else ""
        shown = "pending" if target.value is None else format_value(target.value, unit)
        limit = format_value(target.limit, unit) if unit else f"{target.limit:g}"
        verdict = {True: "MET", False: "MISSED", None: "PENDING"}[target.met]
        extra = f"  ({target.note})" if target.note else ""
        lines.append(f"{verdict:<8} {target.name}: {shown} (target {target.op} {limit}){extra}")
    return "\n".join(lines)
