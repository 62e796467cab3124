"""Comparison nodes: every run of the experiment -> mean +- std over seeds per data set x backbone x method."""

from __future__ import annotations

import pandas as pd

from unseg.core.runs_table import format_mean_std, summarise_runs


def summarise_experiment(runs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The summary table (numbers) and its markdown ("mean ± std", one row per data set x backbone x method)."""
    summary = summarise_runs(runs)
    return summary, format_mean_std(summary).to_markdown(index=False)
