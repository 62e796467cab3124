"""Project hooks: tag each MLflow run with what a researcher filters by (data set, backbone, seed, methods) and name
it after them, so runs tell themselves apart in the MLflow UI's lists and chart legends."""

from __future__ import annotations

import logging
from typing import Any

import mlflow
from kedro.framework.context import KedroContext
from kedro.framework.hooks import hook_impl
from kedro.pipeline import Pipeline

logger = logging.getLogger(__name__)


def run_tags(params: dict[str, Any], pipeline: Pipeline, env: str | None) -> dict[str, str]:
    """Tags of one run: data set source and root name, backbone, seed, env and the evaluated methods."""
    dataset, features = params.get("dataset", {}), params.get("features", {})
    scored = sorted(n.namespace for n in pipeline.nodes if n.name.endswith(".score") and n.namespace)
    return {
        "dataset": str(dataset.get("source")),
        "dataset_root": str(dataset.get("root")),
        "backbone": str(features.get("backbone")),
        "seed": str(params.get("seed")),
        "env": str(env),
        "methods": ",".join(scored),
    }


def run_name(pipeline_name: str, tags: dict[str, str]) -> str:
    """e.g. "__default__ synthetic efficientnet_lite0 seed 0"."""
    return f"{pipeline_name} {tags['dataset']} {tags['backbone']} seed {tags['seed']}"


class MlflowTagsHook:
    """Sets run tags once the kedro-mlflow run is active (it starts in before_pipeline_run), and the run name when
    kedro-mlflow gave it the default one (the pipeline's name; conf/base/mlflow.yml tracking.run.name: null)."""

    def __init__(self) -> None:
        self._tags: dict[str, str] | None = None
        self._pipeline_name = "__default__"

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        self._params, self._env = context.params, context.env

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline) -> None:
        self._tags = run_tags(self._params, pipeline, self._env)
        names = run_params.get("pipeline_name") or run_params.get("pipeline_names") or ["__default__"]
        self._pipeline_name = "+".join([names] if isinstance(names, str) else names)  # kedro-mlflow's default name

    @hook_impl
    def before_node_run(self) -> None:
        run = mlflow.active_run()
        if self._tags and run is not None:
            mlflow.set_tags(self._tags)
            if run.info.run_name == self._pipeline_name:
                mlflow.set_tag("mlflow.runName", run_name(self._pipeline_name, self._tags))
            self._tags = None
