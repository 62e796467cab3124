"""Read-only Kedro dataset: the runs of an MLflow experiment as one pandas table (newest first)."""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from kedro.io import AbstractDataset, DatasetError


class MlflowRunsDataset(AbstractDataset[None, pd.DataFrame]):
    """`mlflow.search_runs` of one experiment: columns run_id, start_time, tags.*, metrics.*, params.*.

    Args:
        experiment: experiment name.
        filter_string: an MLflow search filter, e.g. "tags.dataset = 'synthetic'".
        tracking_uri: None uses the current tracking URI (inside `kedro run`: the one of conf/*/mlflow.yml).
    """

    def __init__(self, experiment: str, filter_string: str = "", tracking_uri: str | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        self._experiment = experiment
        self._filter = filter_string
        self._uri = tracking_uri
        self.metadata = metadata

    def load(self) -> pd.DataFrame:
        client = mlflow.MlflowClient(tracking_uri=self._uri or mlflow.get_tracking_uri())
        experiment = client.get_experiment_by_name(self._experiment)
        if experiment is None:
            return pd.DataFrame(columns=["run_id"])
        runs = client.search_runs([experiment.experiment_id], filter_string=self._filter,
                                  order_by=["attributes.start_time DESC"], max_results=10_000)
        return pd.DataFrame([{"run_id": r.info.run_id, "start_time": r.info.start_time,
                              **{f"tags.{k}": v for k, v in r.data.tags.items()},
                              **{f"metrics.{k}": v for k, v in r.data.metrics.items()},
                              **{f"params.{k}": v for k, v in r.data.params.items()}} for r in runs])

    def save(self, data: None) -> None:
        raise DatasetError("MlflowRunsDataset is read-only")

    def _describe(self) -> dict[str, Any]:
        return {"experiment": self._experiment, "filter_string": self._filter, "tracking_uri": self._uri}
