"""Read-only Kedro dataset: a method's fitted model and its val scores, from the project's latest run or an MLflow run.

Every run logs each fitted model as `models/<method>_model_mlflow.json` and every method's scoring record (with its
cluster -> class mapping) in `reports/scores.json`; the same files stay on disk under `data/` after the run. This
dataset reads the pair for one method, so the predict pipeline can segment new images with the model of any earlier
run: `--params predict.run_id=<MLflow run id>`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from kedro.io import AbstractDataset, DatasetError
from mlflow.exceptions import MlflowException

# method -> the method whose model file it reads: the student is the second head of its EM instance's model
MODEL_OF = {"primaps_em_student": "primaps_em", "picie_primaps_em_student": "picie_primaps_em"}


class TrainedModelDataset(AbstractDataset[None, dict[str, Any]]):
    """{"method", "run_id", "model", "scores"} of one method.

    Args:
        method: the method, as in the comparison table (kmeans, linear_probe, primaps_em, ...).
        run_id: an MLflow run id (or `runs:/<run id>`): read the run's artifacts (from the current tracking URI).
            None: the local files.
        models_dir: the local folder of `<method>_model_mlflow.json`.
        scores_file: the local `scores.json`.

    Example catalog entry::

        predict_model:
          type: unseg.datasets.TrainedModelDataset
          method: ${runtime_params:predict.method,kmeans}
          run_id: ${runtime_params:predict.run_id,null}
    """

    def __init__(self, method: str, run_id: str | None = None, models_dir: str = "data/06_models",
                 scores_file: str = "data/08_reporting/scores.json", metadata: dict[str, Any] | None = None) -> None:
        self._method = method
        self._given_run = run_id or None  # a run id, or the run's URI runs:/<run id>
        self._run_id = run_id.removeprefix("runs:/").strip("/") if run_id else None
        self._models_dir = Path(models_dir)
        self._scores_file = Path(scores_file)
        self.metadata = metadata

    @property
    def _model_name(self) -> str:
        return f"{MODEL_OF.get(self._method, self._method)}_model_mlflow.json"

    def load(self) -> dict[str, Any]:
        if self._run_id is None:
            model_path, scores_path = self._models_dir / self._model_name, self._scores_file
            where = "this project's data/ (run the pipelines first, or pass predict.run_id)"
            return self._read(model_path, scores_path, where)
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for artifact in (f"models/{self._model_name}", f"reports/{self._scores_file.name}"):
                try:
                    paths.append(Path(mlflow.artifacts.download_artifacts(run_id=self._run_id, artifact_path=artifact,
                                                                          dst_path=tmp)))
                except (MlflowException, OSError) as err:
                    raise DatasetError(f"MLflow run {self._run_id} ({mlflow.get_tracking_uri()}): cannot read the "
                                       f"artifact {artifact}: {err}") from err
            return self._read(*paths, f"MLflow run {self._run_id}")

    def _read(self, model_path: Path, scores_path: Path, where: str) -> dict[str, Any]:
        loaded = []
        for path in (model_path, scores_path):
            if not path.is_file():
                raise DatasetError(f"{self._method}: no {path.name} in {where} ({path} does not exist)")
            try:
                loaded.append(json.loads(path.read_text()))
            except json.JSONDecodeError as err:
                raise DatasetError(f"{path}: not valid JSON ({err})") from err
        model, records = loaded
        record = records.get(self._method) if isinstance(records, dict) else None
        if record is None or "skipped" in record:
            raise DatasetError(f"{self._method}: {scores_path.name} of {where} holds no val scores for it (scored: "
                               f"{', '.join(sorted(records)) if isinstance(records, dict) else 'none'})")
        return {"method": self._method, "run_id": self._given_run, "model": model, "scores": record}

    def save(self, data: None) -> None:
        raise DatasetError("TrainedModelDataset is read-only")

    def _describe(self) -> dict[str, Any]:
        return {"method": self._method, "run_id": self._run_id, "models_dir": str(self._models_dir),
                "scores_file": str(self._scores_file)}
