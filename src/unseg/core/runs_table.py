"""Experiment comparison across runs: mean and std over seeds per data set x backbone x method.

Input is the flat table of MLflow runs (one row per run; columns `params.<name>` as kedro-mlflow logs them
flattened, and `metrics.eval/<method>/<metric>`); nothing here imports MLflow.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

# output column -> the flattened run parameter it comes from
GROUPS = {"dataset": "params.dataset.source", "dataset_root": "params.dataset.root",
          "backbone": "params.features.backbone"}
_METRIC = re.compile(
    r"^metrics\.eval/(?P<method>[^/]+)/(?P<metric>acc|miou|miou_things|miou_stuff|majority_acc|majority_miou)$")


def long_scores(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, method): run_id, seed, dataset, backbone, method and the method's scores."""
    rows = []
    for _, run in runs.iterrows():
        per_method: dict[str, dict[str, float]] = {}
        for column, value in run.items():
            match = _METRIC.match(str(column))
            if match and value is not None and not pd.isna(value):
                per_method.setdefault(match["method"], {})[match["metric"]] = float(value)
        for method, scores in per_method.items():
            rows.append({"run_id": run.get("run_id"), "seed": run.get("params.seed"),
                         **{name: run.get(column) for name, column in GROUPS.items()}, "method": method, **scores})
    return pd.DataFrame(rows)


def summarise_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (ddof=1; NaN with one seed) of each score over runs, per data set x backbone x method.

    When several runs share a seed (reruns of one configuration), only the latest counts, so a seed is never counted
    twice; `runs` must come newest first, as MLflow returns them.

    Returns:
        columns dataset, dataset_root, backbone, method, seeds, then <metric>_mean and <metric>_std for each metric
        present.
    """
    scores = long_scores(runs)
    if scores.empty:
        return pd.DataFrame(columns=[*GROUPS, "method", "seeds"])
    keys = [*GROUPS, "method"]
    scores = scores.drop_duplicates([*keys, "seed"], keep="first")
    metrics = [c for c in ("acc", "miou", "miou_things", "miou_stuff", "majority_acc", "majority_miou")
               if c in scores]
    grouped = scores.groupby(keys, sort=False, dropna=False)
    table = grouped[metrics].agg(["mean", "std"])
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    table.insert(0, "seeds", grouped["seed"].nunique())
    return table.reset_index().round(2)


def format_mean_std(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary with "mean ± std" strings per metric, for markdown."""
    out = summary[[*GROUPS, "method", "seeds"]].copy()
    for column in summary.columns:
        if column.endswith("_mean"):
            metric = column[: -len("_mean")]
            std = summary[f"{metric}_std"]
            out[metric] = ["" if np.isnan(m) else f"{m:.2f}" if np.isnan(s) else f"{m:.2f} ± {s:.2f}"
                           for m, s in zip(summary[column], std, strict=True)]
    return out
