"""`DistributedRunner`: a Kedro run as one process per device under torchrun (docs/distributed.md).

Every process runs the same Kedro session (same pipeline, parameters and save version, rank 0's). The nodes run in
the order of a `SequentialRunner`, and after each node every process waits for the others, so a node only starts
when its inputs are saved:
- a data-parallel node (one that saves a sharded store: ingestion, features, PiCIE features, mask proposals,
  predictions) runs on every process; saving its stream, each process computes and writes its share of the shards
  and rank 0 makes the store (`unseg.core.store.write_store`), so the outputs are those of one process;
- any other node (training, k-means fits, evaluation, reports) runs on rank 0 alone, the others wait.
Only rank 0 saves the other outputs, calls the project's hooks and kedro-mlflow (one MLflow run, one lock), so every
file is written once. The other processes load what rank 0 saved from the catalog, never from their own memory.

In a world of one process (plain `kedro run`, or torchrun with one process) it is a `SequentialRunner`.
"""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks.manager import _NullPluginManager
from kedro.io import CatalogProtocol
from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node
from kedro.runner import SequentialRunner
from kedro.runner.task import Task
from pluggy import PluginManager

from unseg.core.distributed import barrier, is_distributed, is_main, rank, world_size
from unseg.datasets.shard_store_dataset import ShardStoreDataset

logger = logging.getLogger(__name__)


def _dataset(catalog: CatalogProtocol, name: str) -> Any:
    return catalog.get(name) if name in catalog else None


def is_data_parallel(node: Node, catalog: CatalogProtocol) -> bool:
    """Whether the node saves a sharded store (whose shards the processes share)."""
    return any(isinstance(_dataset(catalog, name), ShardStoreDataset) for name in node.outputs)


class _ShardsOnly:
    """The catalog as a process other than rank 0 sees it: loads as usual, saves only sharded stores (its share)."""

    def __init__(self, catalog: CatalogProtocol) -> None:
        self._catalog = catalog

    def load(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._catalog.load(name, *args, **kwargs)

    def save(self, name: str, data: Any) -> None:
        if isinstance(_dataset(self._catalog, name), ShardStoreDataset):
            self._catalog.save(name, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._catalog, name)


class DistributedRunner(SequentialRunner):
    """Runs a pipeline on every process of a torch.distributed group (see the module docstring)."""

    def _run(self, pipeline: Pipeline, catalog: CatalogProtocol, hook_manager: PluginManager | None = None,
             run_id: str | None = None) -> None:
        if not is_distributed():
            super()._run(pipeline, catalog, hook_manager, run_id)
            return
        nodes = pipeline.nodes
        self._validate_catalog(catalog)
        self._validate_nodes(nodes)
        self._set_manager_datasets(catalog)
        shards_only = _ShardsOnly(catalog)
        logger.info("Process %d of %d: data-parallel nodes share their shards, rank 0 runs the others", rank(),
                    world_size())
        for done, node in enumerate(nodes, start=1):
            parallel = is_data_parallel(node, catalog)
            if is_main():
                Task(node=node, catalog=catalog, hook_manager=hook_manager, is_async=False, run_id=run_id).execute()
            elif parallel:
                Task(node=node, catalog=shards_only, hook_manager=_NullPluginManager(), is_async=False,
                     run_id=run_id).execute()
            barrier()  # the node's outputs are saved before any process reads them
            if is_main():
                logger.info("Completed node %s (%s)", node.name, "every process" if parallel else "rank 0")
                logger.info("Completed %d out of %d tasks", done, len(nodes))
