"""What the feature library hands back: entries, add results and reports of check, repair and rebuild."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PROBLEM_KINDS = ("model_mismatch", "width_mismatch", "missing_file", "not_a_file", "link", "hash_mismatch",
                 "not_unit", "orphan_file", "foreign_file")


def index_command(command: str, model: str, gallery_dir: Path | str, library_file: Path | str,
                  model_dir: Path | str | None = None) -> str:
    """The index manager command line for this library and model, ready to paste into a POSIX shell:
    `python -m clip_app.index --model M [--model-dir D] --gallery G --library L COMMAND` (--model-dir when it is
    not the default)."""
    from ..config import default_model_dir

    parts = ["python", "-m", "clip_app.index", "--model", str(model)]
    if model_dir and Path(model_dir).expanduser().absolute() != default_model_dir().expanduser().absolute():
        parts += ["--model-dir", str(model_dir)]
    parts += ["--gallery", str(gallery_dir), "--library", str(library_file), command]
    return " ".join(shlex.quote(part) for part in parts)


@dataclass(frozen=True)
class Entry:
    """One image of the library."""

    id: int
    file: str  # gallery file name, relative ("000042.jpg")
    path: Path  # absolute path of the gallery file
    sha256: str
    added: float  # unix time when added
    size: int  # bytes of the file
    name: str = ""  # the name it had when it was added ("cat.jpg", "uploaded image")


@dataclass
class AddResult:
    """What happened to one input of add()."""

    name: str
    status: str  # "added" | "duplicate" | "failed"
    id: int | None
    near_duplicate_of: int | None = None
    similarity: float | None = None
    error: str | None = None
    #: the feature row [D] as stored (float32 of the float16 row) for an added or duplicate image, else None
    feature: torch.Tensor | None = field(default=None, repr=False, compare=False)


@dataclass
class AddReport:
    """The results of one add() call, in input order."""

    results: list[AddResult]

    @property
    def added(self) -> list[AddResult]:
        return [r for r in self.results if r.status == "added"]

    @property
    def duplicates(self) -> list[AddResult]:
        return [r for r in self.results if r.status == "duplicate"]

    @property
    def near_duplicates(self) -> list[AddResult]:
        return [r for r in self.results if r.status == "added" and r.near_duplicate_of is not None]

    @property
    def failed(self) -> list[AddResult]:
        return [r for r in self.results if r.status == "failed"]

    def summary(self) -> str:
        """One line: '3 added, 1 duplicate, 1 near-duplicate, 0 failed'."""
        dup = len(self.duplicates)
        return (f"{len(self.added)} added, {dup} duplicate{'' if dup == 1 else 's'}, "
                f"{len(self.near_duplicates)} near-duplicate{'' if len(self.near_duplicates) == 1 else 's'}, "
                f"{len(self.failed)} failed")


@dataclass(frozen=True)
class Problem:
    """One disagreement between the gallery folder, the library file and the running model."""

    kind: str  # one of PROBLEM_KINDS
    id: int | None
    file: str | None
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass
class CheckReport:
    """Everything check() found; ok when nothing."""

    problems: list[Problem]
    checked_rows: int = 0
    checked_files: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def by_kind(self, kind: str) -> list[Problem]:
        return [p for p in self.problems if p.kind == kind]

    def summary(self) -> str:
        if self.ok:
            return f"ok: {self.checked_rows} rows and {self.checked_files} gallery files agree"
        counts = {k: len(self.by_kind(k)) for k in PROBLEM_KINDS if self.by_kind(k)}
        return f"{len(self.problems)} problem(s): " + ", ".join(f"{v} {k}" for k, v in counts.items())


@dataclass
class RepairReport:
    """What repair() (or first-run indexing) did, one sentence per action."""

    actions: list[str] = field(default_factory=list)
    indexed: list[int] = field(default_factory=list)  # IDs given to files that had no row
    dropped: list[int] = field(default_factory=list)  # IDs whose row was removed
    reencoded: list[int] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.actions)


@dataclass
class RebuildReport:
    """What rebuild() did."""

    previous_model: str
    model: str
    count: int  # rows in the new library
    reencoded: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    indexed: list[int] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
