"""Comparison: the MLflow runs of the experiment -> one table, mean +- std over seeds.

Runs of several seeds: `bash scripts/seeds.sh 0 1 2` (one `kedro run` per seed, then this pipeline), or
`kedro run --pipelines comparison` at any time.
"""

from kedro.pipeline import Pipeline, node, pipeline

from unseg.pipelines.comparison.nodes import summarise_experiment


def create_pipeline(**kwargs: object) -> Pipeline:
    return pipeline([
        node(summarise_experiment, "mlflow_runs", ["rpt_runs_summary", "rpt_runs_summary_markdown"],
             name="summarise_experiment"),
    ])
