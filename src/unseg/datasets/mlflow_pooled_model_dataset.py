"""A PyTorch model logged to the active MLflow run once per content: a run whose network has the weights of an
already logged model links that model to itself instead of logging a second copy (MLflow 3 logged models)."""

from __future__ import annotations

import hashlib
import io
import logging
from typing import Any

import mlflow
import torch
from kedro.io import AbstractDataset, DatasetError
from mlflow.entities import LoggedModelOutput
from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

WEIGHTS_TAG = "unseg.weights_sha256"  # on a logged model: the hash of its state dict
MODEL_TAG = "unseg.model_id.{name}"  # on a run: the logged model it made or reused under that name


def weights_hash(module: torch.nn.Module) -> str:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def run_model_uri(run_id: str, name: str) -> str:
    """The URI of the model `name` of a run: the one the run's tag names (made or reused), else `runs:/<id>/<name>`."""
    model_id = MlflowClient().get_run(run_id).data.tags.get(MODEL_TAG.format(name=name))
    return f"models:/{model_id}" if model_id else f"runs:/{run_id}/{name}"


class MlflowPooledModelDataset(AbstractDataset[torch.nn.Module, None]):
    """Logs a torch module to the active MLflow run with `mlflow.pytorch.log_model(name=...)`, once per weights.

    The logged model carries the hash of its state dict as a tag; a later run whose module has that hash (e.g. PiCIE
    resumed from its final checkpoint) links the existing logged model as its output (`log_outputs`) and records its
    id in the run tag `unseg.model_id.<name>`, so it writes no second copy of the weights. `run_model_uri` reads it
    back. Save-only, as kedro-mlflow's MlflowModelTrackingDataset, which it replaces for such models.

    Example catalog entry::

        picie.mlflow_model:
          type: unseg.datasets.MlflowPooledModelDataset
          name: picie
          save_args:
            serialization_format: pickle
            pip_requirements: [torch, torchvision]
    """

    def __init__(self, name: str, save_args: dict[str, Any] | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        self._name = name
        self._save_args = dict(save_args or {})
        self.metadata = metadata

    def save(self, data: torch.nn.Module) -> None:
        run = mlflow.active_run()
        if run is None:
            raise DatasetError(f"{self._name}: no active MLflow run to log the model to")
        experiment = run.info.experiment_id
        digest = weights_hash(data)
        client = MlflowClient()
        found = client.search_logged_models([experiment], filter_string=f"tags.`{WEIGHTS_TAG}` = '{digest}' "
                                            f"AND name = '{self._name}'", max_results=1)
        if found:
            model_id = found[0].model_id
            client.log_outputs(run.info.run_id, [LoggedModelOutput(model_id=model_id, step=0)])
            logger.info("MLflow model %s: the weights of logged model %s, linked to this run", self._name, model_id)
        else:
            info = mlflow.pytorch.log_model(data, name=self._name, **self._save_args)
            model_id = info.model_id
            client.set_logged_model_tags(model_id, {WEIGHTS_TAG: digest})
        mlflow.set_tag(MODEL_TAG.format(name=self._name), model_id)

    def load(self) -> None:
        raise DatasetError(f"{self._name}: save-only; load a run's model with unseg.datasets.TrainedModelDataset")

    def _describe(self) -> dict[str, Any]:
        return {"name": self._name, "save_args": self._save_args}
