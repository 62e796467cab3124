"""Shared fixtures: an isolated copy of the project (conf + pyproject) with its own data/ and MLflow store."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project folder in tmp_path: conf/ and pyproject.toml copied, empty src/ and data/, MLflow in sqlite."""
    shutil.copytree(PROJECT_ROOT / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("local"))
    (tmp_path / "conf" / "local").mkdir()
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copy(PROJECT_ROOT / ".telemetry", tmp_path / ".telemetry")
    (tmp_path / "src").mkdir()  # bootstrap_project wants the folder; the package itself is installed
    (tmp_path / "data").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    yield tmp_path


@pytest.fixture(autouse=True)
def no_active_mlflow_run() -> Iterator[None]:
    """MLflow keeps the active run in process state; a run left open by one test must not leak into the next."""
    while mlflow.active_run() is not None:
        mlflow.end_run()
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()
