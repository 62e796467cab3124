"""The PiCIE network is logged to MLflow once per weights; a run with the same weights links the logged model."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from unseg.datasets import MlflowPooledModelDataset
from unseg.datasets.mlflow_pooled_model_dataset import MODEL_TAG, run_model_uri


def test_equal_weights_are_logged_once_and_every_run_loads_them(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # the artifact store defaults to ./mlruns
    mlflow.set_experiment("pooled")
    torch.manual_seed(0)
    first, other = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    dataset = MlflowPooledModelDataset("net", save_args={"serialization_format": "pickle",
                                                         "pip_requirements": ["torch"]})
    runs = []
    for module in (first, first, other):
        with mlflow.start_run() as run:
            dataset.save(module)
        runs.append(run.info.run_id)
    models = [MlflowClient().get_run(r).data.tags[MODEL_TAG.format(name="net")] for r in runs]
    assert models[0] == models[1] != models[2]  # the second run reused the first one's logged model
    experiment = mlflow.get_experiment_by_name("pooled").experiment_id
    assert len(MlflowClient().search_logged_models([experiment])) == 2
    for run_id, module in zip(runs, (first, first, other), strict=True):
        loaded = mlflow.pytorch.load_model(run_model_uri(run_id, "net"), map_location="cpu")
        assert torch.equal(loaded.weight, module.weight)


def test_saving_needs_an_active_run() -> None:
    from kedro.io import DatasetError

    while mlflow.active_run() is not None:
        mlflow.end_run()
    with pytest.raises(DatasetError, match="no active MLflow run"):
        MlflowPooledModelDataset("net").save(torch.nn.Linear(2, 2))
