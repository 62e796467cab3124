"""Known answers for the across-runs summary (mean +- std over seeds)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from unseg.core.runs_table import format_mean_std, long_scores, summarise_runs


def _run(run_id: str, seed: int, source: str = "synthetic", **metrics: float) -> dict[str, object]:
    return {"run_id": run_id, "params.seed": str(seed), "params.dataset.source": source,
            "params.dataset.root": f"data/{source}", "params.features.backbone": "b",
            **{f"metrics.eval/{k.replace('__', '/')}": v for k, v in metrics.items()}}


def test_mean_and_std_over_seeds() -> None:
    runs = pd.DataFrame([_run("r2", 1, kmeans__miou=40.0, kmeans__acc=60.0),
                         _run("r1", 0, kmeans__miou=50.0, kmeans__acc=70.0)])
    row = summarise_runs(runs).iloc[0]
    assert (row["method"], row["seeds"]) == ("kmeans", 2)
    assert row["miou_mean"] == 45.0 and row["acc_mean"] == 65.0
    assert row["miou_std"] == pytest.approx(np.std([40.0, 50.0], ddof=1), abs=0.01)


def test_a_seed_counts_once_newest_run_wins() -> None:
    runs = pd.DataFrame([_run("new", 0, kmeans__miou=50.0), _run("old", 0, kmeans__miou=10.0)])
    row = summarise_runs(runs).iloc[0]
    assert row["seeds"] == 1 and row["miou_mean"] == 50.0 and np.isnan(row["miou_std"])


def test_groups_by_dataset_and_keeps_methods_apart() -> None:
    runs = pd.DataFrame([_run("a", 0, kmeans__miou=50.0, rgb_kmeans__miou=8.0),
                         _run("b", 0, "folder", kmeans__miou=30.0)])
    summary = summarise_runs(runs)
    assert len(summary) == 3
    assert set(zip(summary["dataset"], summary["method"], strict=True)) == {
        ("synthetic", "kmeans"), ("synthetic", "rgb_kmeans"), ("folder", "kmeans")}


def test_only_eval_metrics_count() -> None:
    runs = pd.DataFrame([{**_run("a", 0, kmeans__miou=50.0), "metrics.ingestion/train/images": 600.0,
                          "metrics.eval/kmeans/iou/dots": 12.0}])
    scores = long_scores(runs)
    assert list(scores["method"]) == ["kmeans"] and "iou/dots" not in scores


def test_empty_experiment_gives_empty_table() -> None:
    assert summarise_runs(pd.DataFrame(columns=["run_id"])).empty


def test_format_mean_std() -> None:
    runs = pd.DataFrame([_run("a", 0, kmeans__miou=40.0), _run("b", 1, kmeans__miou=50.0)])
    text = format_mean_std(summarise_runs(runs))
    assert text.loc[0, "miou"] == "45.00 ± 7.07"
