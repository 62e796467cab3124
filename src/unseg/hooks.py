"""Project hooks: tag each MLflow run with what a researcher filters by (data set, backbone, seed, methods)."""

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


class MlflowTagsHook:
    """Sets run tags once the kedro-mlflow run is active (it starts in before_pipeline_run)."""

    def __init__(self) -> None:
        self._tags: dict[str, str] | None = None

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        self._params, self._env = context.params, context.env

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline) -> None:
        self._tags = run_tags(self._params, pipeline, self._env)

    @hook_impl
    def before_node_run(self) -> None:
        if self._tags and mlflow.active_run() is not None:
            mlflow.set_tags(self._tags)
            self._tags = None
