"""pyproject.toml's dependency lists stay in step with the requirements files that `make` installs."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def _requirements(name: str) -> set[str]:
    lines = (ROOT / name).read_text().splitlines()
    return {line.split("#")[0].strip() for line in lines
            if line.split("#")[0].strip() and not line.strip().startswith("-r")}


def test_dependencies_match_requirements_txt() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(project["dependencies"]) == _requirements("requirements.txt")


def test_dev_extra_matches_requirements_dev_txt() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(project["optional-dependencies"]["dev"]) == _requirements("requirements-dev.txt")
