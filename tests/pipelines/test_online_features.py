"""Train features computed where they are read (`OnlineStoreDataset`, as conf/cocostuff27 and conf/cityscapes27 set
`feat_train` and `feat_picie_train`): every consumer gives what it gives on the stored copy.

One ingestion + features run stores everything; a second catalog over copies of its prepared images and val features
has `feat_train` (or `feat_picie_train`) online, and runs the producer and the consumers in one run, as `kedro run`
does: the k-means baseline, the linear probe and the PriMaPs proposals, and PiCIE's final k-means.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

import pytest
import torch
from kedro.io import DataCatalog
from kedro.pipeline import Pipeline

from unseg.core.picie.network import PiCIENet
from unseg.core.store import ShardStore
from unseg.datasets import OnlineStoreDataset
from unseg.pipelines import evaluation, features, ingestion, picie
from unseg.pipelines.primaps.pipeline import MASKS, proposals_pipeline

CROP = 32
PREPARED = ("prm_train_images", "prm_val_images", "feat_val", "feat_picie_val")
STORES = (*PREPARED, "feat_train", "feat_picie_train", MASKS)
CONSUMERS = ("kmeans.fit", "linear_probe.fit", "propose_masks")
PICIE_NODES = ("picie.extract_features", "picie.fit_kmeans")


def full_pipeline() -> Pipeline:
    return (ingestion.create_pipeline() + features.create_pipeline() + evaluation.create_pipeline()
            + proposals_pipeline() + picie.create_pipeline())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, pipeline_params: Callable[..., dict[str, Any]],
         pipeline_catalog: Callable[..., DataCatalog], run_pipeline: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("online_features")
    params = pipeline_params(tmp / "raw", crop=CROP, num_train=12, num_val=6, feature_batch_size=4)
    params["evaluation"]["kmeans"].update(num_iters=10, sample_size=5000)
    params["evaluation"]["linear_probe"].update(epochs=2)
    params["picie"]["network"]["pretrained"] = False
    params["picie"]["views"]["input_size"] = CROP
    params["picie"]["eval"].update(num_iters=10, sample_size=2000, batch_size=8)
    torch.manual_seed(0)
    network = PiCIENet(params["picie"]["network"]["arch"]).state_dict()  # an untrained network stands in
    full = full_pipeline()
    consumers = full.only_nodes(*CONSUMERS, *PICIE_NODES)
    outputs: dict[str, dict[str, Any]] = {}
    catalogs: dict[str, DataCatalog] = {}
    for mode in ("stored", "online"):
        data = tmp / mode
        rest = {name for name in full.datasets() - set(STORES) if not name.startswith("params:")}
        catalog = pipeline_catalog(data, params, STORES, filled={name: None for name in rest})
        catalog["picie.network"] = network
        torch.manual_seed(1)  # the backbone's random weights: the same in both runs
        if mode == "stored":
            run_pipeline(full.to_nodes("extract_features"), catalog)
            pipe = consumers
        else:
            for name in PREPARED[:3]:
                shutil.copytree(tmp / "stored" / name, data / name)
            catalog["feat_train"] = OnlineStoreDataset(description="feat_train")
            catalog["feat_picie_train"] = OnlineStoreDataset(description="feat_picie_train")
            pipe = full.only_nodes("extract_features") + consumers  # producer and consumers in one run
        outputs[mode] = run_pipeline(pipe, catalog)
        catalogs[mode] = catalog
    return {"tmp": tmp, "outputs": outputs, "catalogs": catalogs}


def test_the_train_features_are_not_stored(runs: dict[str, Any]) -> None:
    tmp = runs["tmp"]
    assert (tmp / "stored" / "feat_train" / "meta.json").is_file()
    assert (tmp / "stored" / "feat_picie_train" / "meta.json").is_file()
    assert not (tmp / "online" / "feat_train").exists() and not (tmp / "online" / "feat_picie_train").exists()
    assert (tmp / "online" / "feat_val" / "meta.json").is_file()  # val features stay stored


@pytest.mark.parametrize("model", ["kmeans.model", "linear_probe.model", "picie.kmeans"])
def test_models_are_identical(runs: dict[str, Any], model: str) -> None:
    stored, online = (runs["catalogs"][mode].load(model) for mode in ("stored", "online"))
    assert online == stored  # centroids (and bias), backbone, ingestion: the same floats


def test_mask_proposals_are_identical(runs: dict[str, Any]) -> None:
    stored, online = (ShardStore(runs["tmp"] / mode / MASKS) for mode in ("stored", "online"))
    assert online.fingerprint == stored.fingerprint and online.attrs == stored.attrs and online.ids == stored.ids
    for index in range(stored.num_shards):
        assert online.shard(index)["mask"].tobytes() == stored.shard(index)["mask"].tobytes()


def test_the_stream_is_released_after_its_last_consumer(runs: dict[str, Any]) -> None:
    catalog = runs["catalogs"]["online"]
    for name in ("feat_train", "feat_picie_train"):  # the backbone is not held for the rest of the run
        assert isinstance(catalog.get(name), OnlineStoreDataset) and not catalog.exists(name)
