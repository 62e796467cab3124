"""The comparison pipeline over runs logged to a temporary MLflow store: mean +- std over seeds."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from kedro.framework.project import configure_project
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from unseg.datasets import MlflowRunsDataset

pytestmark = pytest.mark.integration


def _log_run(seed: int, miou: float) -> None:
    with mlflow.start_run():
        mlflow.log_params({"seed": seed, "dataset.source": "synthetic", "dataset.root": "data/x",
                           "features.backbone": "efficientnet_lite0"})
        mlflow.log_metrics({"eval/kmeans/miou": miou, "eval/kmeans/acc": miou + 20})


def test_comparison_pipeline_prints_mean_and_std(project_copy: Path) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{project_copy / 'mlflow.db'}")
    mlflow.set_experiment("unseg")
    _log_run(0, 40.0)
    _log_run(1, 50.0)

    runs = MlflowRunsDataset("unseg").load()
    assert len(runs) == 2 and "metrics.eval/kmeans/miou" in runs

    bootstrap_project(project_copy)
    configure_project("unseg")
    with KedroSession.create(project_path=project_copy, env="test") as session:
        session.run(pipeline_name="comparison")
    summary = pd.read_csv(next((project_copy / "data/08_reporting/runs_summary.csv").glob("*/runs_summary.csv")))
    row = summary[summary["method"] == "kmeans"].iloc[0]
    assert row["seeds"] == 2 and row["miou_mean"] == 45.0 and row["acc_mean"] == 65.0
    assert "45.00 ± 7.07" in (project_copy / "data/08_reporting/runs_summary.md").read_text()


def test_missing_experiment_reads_as_no_runs(tmp_path: Path) -> None:
    assert MlflowRunsDataset("nope", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}").load().empty
