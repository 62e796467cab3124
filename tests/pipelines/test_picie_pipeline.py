"""The PiCIE pipeline run by Kedro's SequentialRunner on a catalog built here (tiny synthetic stores)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.json import JSONDataset
from kedro_datasets_experimental.pytorch import PyTorchDataset
from matplotlib.figure import Figure
from scenes import SceneStream

from unseg.core.picie import ClusterConfig, EvalConfig, LossConfig, NetworkConfig, TrainConfig, ViewConfig
from unseg.core.store import ShardStore, write_store
from unseg.datasets import ShardStoreDataset
from unseg.pipelines.picie import create_pipeline
from unseg.settings import CONFIG_LOADER_ARGS

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SIDE = 32
STORES = ("prm_train_images", "prm_val_images", "feat_picie_train", "feat_picie_val", "picie.val_predictions")



def base_parameters() -> dict[str, Any]:
    loader = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": "test"})
    return loader["parameters"]


def tiny_parameters(checkpoints: Path) -> dict[str, Any]:
    params = base_parameters()
    params["dataset"]["crop"] = SIDE
    params["device"] = "cpu"
    picie = params["picie"]
    picie["network"]["pretrained"] = False
    picie["views"].update(input_size=SIDE)
    picie["clustering"].update(num_iters=10, sample_size=400, init_batches=2, batch_size=4)
    picie["train"].update(epochs=1, batch_size=4, checkpoint_dir=str(checkpoints), progress=False)
    picie["eval"].update(num_iters=10, sample_size=400, batch_size=8, monitor=True, untrained_baseline=True)
    return params


@pytest.fixture(scope="module")
def picie_run(tmp_path_factory: pytest.TempPathFactory,
              pipeline_param_datasets: Callable[[dict[str, Any]], dict[str, MemoryDataset]]) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("picie_pipeline")
    write_store(SceneStream("train", 16, SIDE, crop=SIDE), tmp / "prm_train_images", progress=False)
    write_store(SceneStream("val", 4, SIDE, crop=SIDE), tmp / "prm_val_images", progress=False)
    reads: list[tuple[Path, tuple[str, ...] | None]] = []
    patch = pytest.MonkeyPatch()
    real_shard, real_item = ShardStore.shard, ShardStore.item

    def spy_shard(self: ShardStore, index: int, names: Any = None) -> dict[str, np.ndarray]:
        reads.append((self.root, None if names is None else tuple(names)))
        return real_shard(self, index, names)

    def spy_item(self: ShardStore, key: Any, names: Any = None) -> dict[str, np.ndarray]:
        reads.append((self.root, None if names is None else tuple(names)))
        return real_item(self, key, names)

    patch.setattr(ShardStore, "shard", spy_shard)
    patch.setattr(ShardStore, "item", spy_item)
    params = tiny_parameters(tmp / "checkpoints")
    stores = {name: ShardStoreDataset(str(tmp / name), progress=False) for name in STORES}
    memory = {name: MemoryDataset(copy_mode="assign")
              for name in ("picie.mlflow_model", "picie.training_curves", "picie.train_info")}
    files = {"picie.network": PyTorchDataset(filepath=str(tmp / "picie.pt")),
             "picie.metrics": JSONDataset(filepath=str(tmp / "picie_metrics.json")),
             "picie.kmeans": JSONDataset(filepath=str(tmp / "picie_kmeans.json"))}
    catalog = DataCatalog({**stores, **memory, **files, **pipeline_param_datasets(params)})
    try:
        outputs = SequentialRunner().run(create_pipeline(), catalog)
    finally:
        patch.undo()
    return {"tmp": tmp, "catalog": catalog, "outputs": {k: v.load() for k, v in outputs.items()}, "reads": reads,
            "params": params}


def test_pipeline_shape() -> None:
    pipe = create_pipeline()
    assert {n.name for n in pipe.nodes} == {"picie.train", "picie.extract_features", "picie.plot_training_curves",
                                            "picie.fit_kmeans", "picie.predict"}
    assert pipe.inputs() == {"prm_train_images", "prm_val_images", "params:dataset", "params:seed", "params:device",
                             "params:loader.num_workers",
                             *(f"params:picie.{block}" for block in
                               ("network", "views", "clustering", "loss", "train", "eval"))}
    assert {"picie.val_predictions", "picie.training_curves", "picie.mlflow_model",
            "picie.train_info"} <= pipe.outputs()
    assert {"feat_picie_train", "feat_picie_val", "picie.kmeans", "picie.network"} <= pipe.all_outputs()


def test_val_predictions_for_the_evaluation_pipeline(picie_run: dict[str, Any]) -> None:
    preds = picie_run["catalog"].load("picie.val_predictions")
    val = picie_run["catalog"].load("prm_val_images")
    assert preds.ids == val.ids
    assert {k: (s.dtype, s.shape) for k, s in preds.fields.items()} == {"pred": ("uint8", (SIDE, SIDE))}
    assert preds.attrs["num_clusters"] == 8  # K_test = dataset.num_classes
    kmeans = picie_run["catalog"].load("picie.kmeans")
    assert kmeans["input"] == "feat" and kmeans["metric"] == "cosine"
    assert np.asarray(kmeans["centroids"]).shape == (8, 128)
    pred = np.concatenate([s["pred"] for s in preds.iter_shards()])
    assert pred.max() < 8


@pytest.mark.parametrize("name, count", [("feat_picie_train", 16), ("feat_picie_val", 4)])
def test_learned_features_for_primaps(picie_run: dict[str, Any], name: str, count: int) -> None:
    store = picie_run["catalog"].load(name)
    assert len(store) == count
    assert {k: (s.dtype, s.shape) for k, s in store.fields.items()} == {"feat": ("float16", (128, 8, 8))}
    assert store.attrs["stride"] == 4 and store.attrs["normalised"] is False
    assert np.isfinite(store.shard(0)["feat"]).all()


def test_network_checkpoint_metrics_and_info(picie_run: dict[str, Any]) -> None:
    outputs = picie_run["outputs"]
    state = picie_run["catalog"].load("picie.network")
    assert state["laterals.3.weight"].shape[:1] == (128,) and "laterals.0.bias" in state
    assert isinstance(outputs["picie.mlflow_model"], torch.nn.Module)
    metrics = picie_run["catalog"].load("picie.metrics")
    for name in ("loss", "loss_within", "loss_cross", "cluster_time_s", "label_time_s", "train_time_s",
                 "cluster_entropy", "val_miou", "val_acc"):
        assert [m["step"] for m in metrics[f"picie/{name}"]] == [1]
    assert [m["step"] for m in metrics["picie/untrained_kmeans_miou"]] == [0]
    curves = outputs["picie.training_curves"]  # one epoch: no curve has two points yet
    assert isinstance(curves, Figure) and curves.axes[0].texts[0].get_text() == "no metric has more than one step"
    info = outputs["picie.train_info"]
    assert info["init"] == "random" and info["resumed_from_epoch"] == 0
    assert (Path(info["checkpoint_dir"]) / "epoch_0001.pt").is_file()


def test_train_labels_are_never_read(picie_run: dict[str, Any]) -> None:
    train_root = picie_run["tmp"] / "prm_train_images"
    train_reads = [names for root, names in picie_run["reads"] if Path(root) == train_root]
    assert train_reads, "the spy saw no read of the train store"
    assert all(names is not None and "label" not in names for names in train_reads), train_reads
    val_reads = [names for root, names in picie_run["reads"] if Path(root) == picie_run["tmp"] / "prm_val_images"]
    assert any(names is not None and "label" in names for names in val_reads)  # val labels: monitoring only


def test_base_parameters_build_every_config() -> None:
    picie = base_parameters()["picie"]
    NetworkConfig(**picie["network"])
    ViewConfig(**picie["views"])
    ClusterConfig(**{**picie["clustering"], "num_clusters": picie["clustering"]["num_clusters"] or 8})
    LossConfig(**picie["loss"])
    TrainConfig(**picie["train"])
    EvalConfig(**{**picie["eval"], "num_clusters": picie["eval"]["num_clusters"] or 8})


def test_catalog_has_the_picie_entries() -> None:
    loader = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": "test"})
    catalog = loader["catalog"]
    assert catalog["picie.kmeans"]["filepath"] == "data/06_models/picie_kmeans.json"
    assert catalog["picie.kmeans"]["versioned"] is True
    assert catalog["picie.network"]["versioned"] is True
    assert catalog["picie.metrics"]["prefix"] == ""
    assert "{method}.val_predictions" in catalog and "feat_{split}" in catalog  # factories serve the rest
