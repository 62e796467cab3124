"""The distributed runner's wiring without a process group: which nodes of the chain share their shards across the
processes (every node that saves a sharded store, and no other), what the other processes' catalog saves, and the
command line `python -m unseg run` builds under torchrun."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kedro.framework.project import configure_project, pipelines
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline, node

from unseg.__main__ import RUNNER, distributed_args
from unseg.datasets.shard_store_dataset import ShardStoreDataset
from unseg.runner import DistributedRunner, _ShardsOnly, is_data_parallel


def test_the_data_parallel_nodes_of_the_chain_are_those_that_write_stores(project_copy: Path) -> None:
    bootstrap_project(project_copy)
    configure_project("unseg")
    with KedroSession.create(project_path=project_copy, env="test") as session:
        catalog = session.load_context().catalog
    nodes = pipelines["__default__"].nodes
    parallel = {n.name for n in nodes if is_data_parallel(n, catalog)}
    assert {"prepare_images", "extract_features", "picie.extract_features", "propose_masks", "kmeans.predict",
            "picie.predict", "primaps_em.predict"} <= parallel
    training = {"picie.train", "primaps_em.fit", "picie_primaps_em.fit", "kmeans.fit", "linear_probe.fit",
                "kmeans.score", "build_image_index"}
    assert training <= {n.name for n in nodes} and not parallel & training
    for name in parallel:  # each saves at least one sharded store
        outputs = next(n for n in nodes if n.name == name).outputs
        assert any(isinstance(catalog.get(o), ShardStoreDataset) for o in outputs if o in catalog), name


class Recorder(ShardStoreDataset):
    def __init__(self) -> None:
        super().__init__(filepath="unused")
        self.saved: list[Any] = []

    def save(self, data: Any) -> None:
        self.saved.append(data)


def test_other_processes_save_only_their_shards_and_load_everything() -> None:
    store, memory = Recorder(), MemoryDataset(1)
    catalog = DataCatalog({"store": store, "other": memory})
    view = _ShardsOnly(catalog)
    view.save("store", "stream")
    view.save("other", 2)
    assert store.saved == ["stream"] and view.load("other") == 1  # the non-store output was not saved


def test_in_a_world_of_one_it_is_a_sequential_runner() -> None:
    catalog = DataCatalog({"x": MemoryDataset(2)})
    pipeline = Pipeline([node(lambda x: x + 1, "x", "y", name="plus"), node(lambda y: y * 10, "y", "z", name="times")])
    DistributedRunner().run(pipeline, catalog)
    assert catalog.load("z") == 30


def test_command_line_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed_args(["--env", "test"]) == ["--env", "test"]  # no torchrun: `kedro run` unchanged
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr("unseg.core.distributed.init_from_env", lambda: True)
    monkeypatch.setattr("signal.signal", lambda *args: None)
    assert distributed_args(["--env", "test"]) == ["--env", "test", "--runner", RUNNER]
    with pytest.raises(SystemExit, match="leave out --runner"):
        distributed_args(["--runner", "SequentialRunner"])
