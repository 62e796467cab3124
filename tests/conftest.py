"""Shared fixtures: an isolated copy of the project (conf + pyproject) with its own data/ and MLflow store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from projects import copy_project


@pytest.fixture
def project_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project folder in tmp_path: conf/ and pyproject.toml copied, empty src/ and data/, MLflow in sqlite."""
    copy_project(tmp_path)
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """End-to-end modules (tests/test_*.py, the slowest) first: with xdist (`--dist loadfile`) the workers start on
    them and finish with the many short unit tests, instead of one worker running a long end-to-end test at the end."""
    items.sort(key=lambda item: item.path.parent.name != "tests")
