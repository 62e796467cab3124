"""Project folders for end-to-end runs: a copy of the project's configuration with its own data/ and MLflow store."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def copy_project(folder: Path) -> Path:
    """A project folder: conf/ (without local/) and pyproject.toml copied, empty src/ and data/."""
    shutil.copytree(PROJECT_ROOT / "conf", folder / "conf", ignore=shutil.ignore_patterns("local"))
    (folder / "conf" / "local").mkdir()
    shutil.copy(PROJECT_ROOT / "pyproject.toml", folder / "pyproject.toml")
    shutil.copy(PROJECT_ROOT / ".telemetry", folder / ".telemetry")
    (folder / "src").mkdir()  # bootstrap_project wants the folder; the package itself is installed
    (folder / "data").mkdir()
    return folder


def run_environment(project: Path) -> dict[str, str]:
    """The environment of a `kedro run` subprocess in `project`: its own MLflow store, one OpenMP thread."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
