"""Shared helpers of the pipeline tests: Kedro pipelines run by SequentialRunner on catalogs built here.

Conftest modules cannot be imported by name reliably, so the helpers reach the tests as fixtures that return the
functions: `pipeline_params`, `pipeline_param_datasets`, `pipeline_catalog` and `run_pipeline`. The one autouse
fixture, `pipelines_one_thread`, only sets thread counts (and restores them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline
from kedro.runner import SequentialRunner

from unseg.datasets import ShardStoreDataset
from unseg.settings import CONFIG_LOADER_ARGS

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def pipelines_one_thread() -> Iterator[None]:
    """One torch and one faiss thread: these arrays are tiny, and on a busy 2-core machine OpenMP threads mostly wait
    on each other (a 10-20x slowdown measured); restored afterwards."""
    import torch

    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss is a project dependency
        faiss = None
    threads = torch.get_num_threads()
    faiss_threads = faiss.omp_get_max_threads() if faiss is not None else None
    torch.set_num_threads(1)
    if faiss is not None:
        faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    if faiss is not None:
        faiss.omp_set_num_threads(faiss_threads)


def load_pipeline_parameters(root: Path, *, crop: int = 32, num_train: int = 12, num_val: int = 6, height: int = 48,
                             width: int = 64, shard_size: int = 4, feature_batch_size: int | None = None,
                             **dataset: Any) -> dict[str, Any]:
    """conf/base + conf/test parameters, shrunk further: `num_train` + `num_val` synthetic images of `height` x
    `width` under `root`, resized to 48, cropped to `crop`, in shards of `shard_size`; `dataset` overrides more keys
    of the dataset block. With `feature_batch_size`: features in batches of that size from random weights, on the CPU.
    """
    loader = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": "test"})
    params = loader["parameters"]
    params["dataset"].update(root=str(root), resize=48, crop=crop, **dataset)
    params["dataset"]["synthetic"].update(num_train=num_train, num_val=num_val, height=height, width=width)
    params["ingestion"]["shard_size"] = shard_size
    if feature_batch_size is not None:
        params["features"].update(batch_size=feature_batch_size, pretrained=False)
        params["device"] = "cpu"
    return params


def param_datasets(params: dict[str, Any]) -> dict[str, MemoryDataset]:
    """`params:<key>` for every key and nested key, as a Kedro session feeds them."""
    out: dict[str, MemoryDataset] = {}

    def walk(prefix: str, value: Any) -> None:
        out[f"params:{prefix}"] = MemoryDataset(value)
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}", sub)

    for key, value in params.items():
        walk(key, value)
    return out


def build_catalog(data: Path, params: dict[str, Any], stores: Iterable[str], empty: Iterable[str] = (),
                  filled: Mapping[str, Any] | None = None) -> DataCatalog:
    """ShardStoreDatasets `stores` under `data`, MemoryDatasets (copy mode "assign") named in `empty` with no data
    and in `filled` holding the data given (None included), and the `params:` datasets of `params`."""
    datasets: dict[str, Any] = {name: ShardStoreDataset(str(data / name), progress=False) for name in stores}
    datasets.update({name: MemoryDataset(copy_mode="assign") for name in empty})
    datasets.update({name: MemoryDataset(value, copy_mode="assign") for name, value in (filled or {}).items()})
    return DataCatalog({**datasets, **param_datasets(params)})


def run(pipe: Pipeline, catalog: DataCatalog, load: bool = True) -> dict[str, Any]:
    """Runs and returns the free outputs, loaded, or with `load=False` their datasets (Kedro 1.x returns datasets,
    not data)."""
    outputs = SequentialRunner().run(pipe, catalog)
    assert set(outputs) == pipe.outputs()
    return {name: dataset.load() for name, dataset in outputs.items()} if load else outputs


@pytest.fixture(scope="session")
def pipeline_params() -> Callable[..., dict[str, Any]]:
    """`load_pipeline_parameters(root, *, crop=32, num_train=12, num_val=6, ..., **dataset)`."""
    return load_pipeline_parameters


@pytest.fixture(scope="session")
def pipeline_param_datasets() -> Callable[[dict[str, Any]], dict[str, MemoryDataset]]:
    """`param_datasets(params)`: the `params:<key>` datasets."""
    return param_datasets


@pytest.fixture(scope="session")
def pipeline_catalog() -> Callable[..., DataCatalog]:
    """`build_catalog(data, params, stores, empty=(), filled=None)`."""
    return build_catalog


@pytest.fixture(scope="session")
def run_pipeline() -> Callable[..., dict[str, Any]]:
    """`run(pipe, catalog, load=True)`: SequentialRunner, free outputs loaded (or their datasets)."""
    return run
