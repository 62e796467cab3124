"""Read-only Kedro dataset: a method's fitted model and its val scores, from the project's latest run or an MLflow run.

Every run logs each fitted model as `models/<method>_model_mlflow.json` and every method's scoring record (with its
cluster -> class mapping) in `reports/scores.json`; the same files stay on disk under `data/` after the run. Methods
on PiCIE's features also need PiCIE's network: the latest version of the catalog's `picie.network` locally, the
run's MLflow model `picie` otherwise. This dataset reads them for one method, so the predict pipeline can segment new
images with the model of any earlier run: `--params predict.run_id=<MLflow run id>`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from kedro.io import AbstractDataset, DatasetError, Version
from kedro_datasets_experimental.pytorch import PyTorchDataset
from mlflow.exceptions import MlflowException

from unseg.core.predict import method_spec
from unseg.datasets.mlflow_pooled_model_dataset import run_model_uri

PICIE_MODEL = "picie"  # the MLflow model name of PiCIE's network (conf/base/catalog_picie.yml, picie.mlflow_model)


class TrainedModelDataset(AbstractDataset[None, dict[str, Any]]):
    """{"method", "run_id", "model", "scores", "picie"} of one method.

    "picie" is None, or for methods on PiCIE's features {"model": PiCIE's k-means model (its arch, input size and
    weight fingerprint), "state": its network's state dict}.

    Args:
        method: the method, as in the comparison table (kmeans, linear_probe, picie, primaps_em_crf, ...).
        run_id: an MLflow run id (or `runs:/<run id>`): read the run's artifacts (from the current tracking URI).
            None: the local files.
        models_dir: the local folder of `<method>_model_mlflow.json`.
        scores_file: the local `scores.json`.
        network_file: the local, Kedro-versioned state dict of PiCIE's network (the latest version is read).

    Example catalog entry::

        predict_model:
          type: unseg.datasets.TrainedModelDataset
          method: ${runtime_params:predict.method,kmeans}
          run_id: ${runtime_params:predict.run_id,null}
    """

    def __init__(self, method: str, run_id: str | None = None, models_dir: str = "data/06_models",
                 scores_file: str = "data/08_reporting/scores.json",
                 network_file: str = "data/06_models/picie_network.pt", metadata: dict[str, Any] | None = None) -> None:
        self._method = method
        self._given_run = run_id or None  # a run id, or the run's URI runs:/<run id>
        self._run_id = run_id.removeprefix("runs:/").strip("/") if run_id else None
        self._models_dir = Path(models_dir)
        self._scores_file = Path(scores_file)
        self._network_file = Path(network_file)
        self.metadata = metadata

    def load(self) -> dict[str, Any]:
        try:
            spec = method_spec(self._method)
        except ValueError as err:
            raise DatasetError(str(err)) from err
        names = [spec.model, *([PICIE_MODEL] if spec.picie and spec.model != PICIE_MODEL else [])]
        if self._run_id is None:
            where = "this project's data/ (run the pipelines first, or pass predict.run_id)"
            models = [self._read_json(self._models_dir / f"{name}_model_mlflow.json", where) for name in names]
            scores = self._read_json(self._scores_file, where)
        else:
            where = f"MLflow run {self._run_id}"
            with tempfile.TemporaryDirectory() as tmp:
                models = [self._read_json(self._artifact(f"models/{name}_model_mlflow.json", tmp), where)
                          for name in names]
                scores = self._read_json(self._artifact(f"reports/{self._scores_file.name}", tmp), where)
        record = scores.get(self._method) if isinstance(scores, dict) else None
        if record is None or "skipped" in record:
            raise DatasetError(f"{self._method}: {self._scores_file.name} of {where} holds no val scores for it "
                               f"(scored: {', '.join(sorted(scores)) if isinstance(scores, dict) else 'none'})")
        picie = None
        if spec.picie:
            state = self._local_network(where) if self._run_id is None else self._run_network()
            picie = {"model": models[-1], "state": state}
        return {"method": self._method, "run_id": self._given_run, "model": models[0], "scores": record,
                "picie": picie}

    def _read_json(self, path: Path, where: str) -> Any:
        if not path.is_file():
            raise DatasetError(f"{self._method}: no {path.name} in {where} ({path} does not exist)")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path}: not valid JSON ({err})") from err

    def _artifact(self, artifact: str, tmp: str) -> Path:
        try:
            return Path(mlflow.artifacts.download_artifacts(run_id=self._run_id, artifact_path=artifact,
                                                            dst_path=tmp))
        except (MlflowException, OSError) as err:
            raise DatasetError(f"MLflow run {self._run_id} ({mlflow.get_tracking_uri()}): cannot read the "
                               f"artifact {artifact}: {err}") from err

    def _local_network(self, where: str) -> dict[str, Any]:
        try:
            return PyTorchDataset(filepath=str(self._network_file), version=Version(None, None)).load()
        except DatasetError as err:
            raise DatasetError(f"{self._method}: no PiCIE network in {where} ({self._network_file}: {err})") from err

    def _run_network(self) -> dict[str, Any]:
        uri = f"runs:/{self._run_id}/{PICIE_MODEL}"
        try:
            uri = run_model_uri(self._run_id, PICIE_MODEL)
            return mlflow.pytorch.load_model(uri, map_location="cpu").state_dict()
        except (MlflowException, OSError) as err:
            raise DatasetError(f"MLflow run {self._run_id} ({mlflow.get_tracking_uri()}): cannot load PiCIE's "
                               f"network {uri}: {err}") from err

    def save(self, data: None) -> None:
        raise DatasetError("TrainedModelDataset is read-only")

    def _describe(self) -> dict[str, Any]:
        return {"method": self._method, "run_id": self._run_id, "models_dir": str(self._models_dir),
                "scores_file": str(self._scores_file), "network_file": str(self._network_file)}
