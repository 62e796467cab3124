"""The notebooks' code cells run top to bottom against a temporary MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_runs(notebook: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("unseg")
    for seed, miou in ((0, 40.0), (1, 50.0)):
        with mlflow.start_run():
            mlflow.log_params({"seed": seed, "dataset.source": "synthetic", "dataset.root": "r",
                               "features.backbone": "b"})
            mlflow.log_metrics({"eval/kmeans/miou": miou, "eval/kmeans/acc": 60.0})
    namespace: dict[str, object] = {}
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] == "code":
            exec("".join(cell["source"]), namespace)  # noqa: S102 - our own notebook
    if "summary" in namespace:
        assert namespace["summary"]["seeds"].tolist() == [2]
