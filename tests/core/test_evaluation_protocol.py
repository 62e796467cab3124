"""The evaluation protocol as wired: which split each fit reads, val labels that monitor but never steer a fit, and
predictions scored against the labels of the same images in the same order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from scenes import SceneStream

from unseg.core.evaluate import confusion_of
from unseg.core.picie.clustering import ClusterConfig
from unseg.core.picie.loss import LossConfig
from unseg.core.picie.monitor import EvalConfig
from unseg.core.picie.network import NetworkConfig
from unseg.core.picie.train import TrainConfig, train_picie
from unseg.core.picie.views import ViewConfig
from unseg.core.primaps.predict import val_scores
from unseg.core.primaps.sources import StoreFeatures
from unseg.core.primaps.train import EMConfig, EMData, EMResult, fit_em
from unseg.core.store import FieldSpec, Shard, ShardStore, write_store

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Items:
    """A store's content as whole arrays under the given ids, in shards of 2."""

    def __init__(self, ids: list[str], **arrays: np.ndarray) -> None:
        self.ids, self.arrays = ids, arrays
        self.fields = {k: FieldSpec(str(v.dtype), tuple(v.shape[1:])) for k, v in arrays.items()}
        self.attrs: dict = {}
        self.fingerprint = "-".join(ids) + str(sorted(arrays))
        self.num_shards = (len(ids) + 1) // 2

    def iter_shards(self, todo: list[int]) -> Iterator[Shard]:
        for i in todo:
            yield Shard(i, self.ids[2 * i:2 * i + 2], {k: v[2 * i:2 * i + 2] for k, v in self.arrays.items()})


def store(root: Path, ids: list[str], **arrays: np.ndarray) -> ShardStore:
    write_store(Items(ids, **arrays), root, progress=False)
    return ShardStore(root)


# ------------------------------------------------------------------------------------------ which split a node reads
def default_pipeline():  # noqa: ANN201 - a kedro Pipeline
    from kedro.framework.project import configure_project

    from unseg.pipeline_registry import register_pipelines

    configure_project("unseg")
    return register_pipelines()["__default__"]


def data_inputs(node) -> set[str]:  # noqa: ANN001
    return {i for i in node.inputs if not i.startswith("params:")}


def test_baselines_fit_on_train_and_predict_on_val() -> None:
    """k-means baselines and the probe fit on the train split only; every prediction node reads val stores only."""
    nodes = {n.name: n for n in default_pipeline().nodes}
    assert data_inputs(nodes["rgb_kmeans.fit"]) == {"prm_train_images"}
    assert data_inputs(nodes["kmeans.fit"]) == {"feat_train"}
    assert data_inputs(nodes["linear_probe.fit"]) == {"feat_train", "prm_train_images"}
    assert data_inputs(nodes["picie.fit_kmeans"]) == {"feat_picie_train"}
    assert data_inputs(nodes["propose_masks"]) == {"prm_train_images", "feat_train"}
    for name, node in nodes.items():
        if name.endswith(".predict"):
            assert not any("train" in i for i in data_inputs(node)), name
            assert any(i.endswith("val") or "val_" in i for i in data_inputs(node)), name


def test_every_method_is_scored_on_its_own_val_predictions() -> None:
    """method.score reads method.val_predictions and the val labels, nothing else."""
    scores = [n for n in default_pipeline().nodes if n.name.endswith(".score")]
    assert len(scores) == 10
    for node in scores:
        method = node.name.removesuffix(".score")
        assert data_inputs(node) == {f"{method}.val_predictions", "prm_val_images"}
        assert node.outputs == [f"{method}.scores"]


# --------------------------------------------------------------------------- val labels monitor but never steer a fit
def test_picie_val_monitoring_does_not_change_the_trained_network(tmp_path: Path) -> None:
    """The same PiCIE run with and without val monitoring (per-epoch scores and the untrained baseline) ends with
    identical weights: the monitor reads val labels, so it must neither consume the run's random draws nor touch the
    network's state."""
    side = 32
    write_store(SceneStream("train", 8, side), tmp_path / "train", progress=False)
    write_store(SceneStream("val", 4, side), tmp_path / "val", progress=False)
    train, val = ShardStore(tmp_path / "train"), ShardStore(tmp_path / "val")
    args = (NetworkConfig(pretrained=False), ViewConfig(input_size=side, blur_radius=(0.05, 0.3)),
            ClusterConfig(num_clusters=3, num_iters=5, sample_size=300, init_batches=2, batch_size=4), LossConfig(),
            TrainConfig(epochs=1, batch_size=4, progress=False))
    monitored = train_picie(train, val, *args, EvalConfig(num_clusters=4, num_iters=5, sample_size=300, batch_size=4),
                            num_classes=8, seed=0, device=CPU)
    assert {"picie/untrained_kmeans_miou", "picie/val_miou"} <= set(monitored.history)
    blind = train_picie(train, None, *args, EvalConfig(num_clusters=4, monitor=False, untrained_baseline=False),
                        num_classes=8, seed=0, device=CPU)
    for name, value in monitored.network.state_dict().items():
        torch.testing.assert_close(value, blind.network.state_dict()[name], rtol=0, atol=0, msg=name)


@pytest.fixture
def em_setup(tmp_path: Path) -> dict:
    """8 images of 4x4-cell class blocks (3 classes), their features (class direction + noise) and PriMaPs = the
    blocks' classes; val = the same images with labels."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.repeat(rng.integers(0, 3, (8, 4, 4)), 2, 1), 2, 2).astype(np.uint8)  # (8, 8, 8)
    feats = (np.eye(3, 6)[labels[:, ::2, ::2]] * 3 + rng.normal(0, 0.5, (8, 4, 4, 6))).transpose(0, 3, 1, 2)
    ids = [f"img{i}" for i in range(8)]
    features = StoreFeatures(store(tmp_path / "feat", ids, feat=feats.astype(np.float16)), CPU)
    masks = store(tmp_path / "masks", ids, mask=labels)
    return {"data": EMData(features, features, masks, np.zeros((0, 6), np.float32)),
            "val": store(tmp_path / "val", ids, image=np.zeros((8, 8, 8, 3), np.uint8), label=labels),
            "centroids": np.eye(3, 6, dtype=np.float32) + 0.3}


def em_config(seed: int) -> EMConfig:
    return EMConfig(num_prototypes=3, epochs=2, batch_size=4, lr=0.02, init="centroids", ema_every=1, seed=seed)


def assert_same_prototypes(a: EMResult, b: EMResult) -> None:
    for name in ("teacher", "student"):
        for key, value in getattr(a, name).state_dict().items():
            torch.testing.assert_close(value, getattr(b, name).state_dict()[key], rtol=0, atol=0, msg=f"{name} {key}")


def test_primaps_em_val_monitoring_does_not_change_the_prototypes(em_setup: dict) -> None:
    """PriMaPs-EM with the val monitor (teacher scored on val labels every epoch) and without it: same teacher and
    student, to the bit."""
    features = em_setup["data"].teacher
    monitored = fit_em(em_setup["data"], em_config(0), CPU, centroids=em_setup["centroids"],
                       monitor=lambda teacher: val_scores(teacher, features, em_setup["val"], 3))
    assert "val_miou" in monitored.history[-1]
    assert_same_prototypes(monitored, fit_em(em_setup["data"], em_config(0), CPU, centroids=em_setup["centroids"]))


def test_primaps_em_seed_changes_the_batches_and_so_the_prototypes(em_setup: dict) -> None:
    """The seed draws the batch order: another seed gives other prototypes, the same seed the same ones."""
    runs = [fit_em(em_setup["data"], em_config(s), CPU, centroids=em_setup["centroids"]) for s in (0, 1, 0)]
    assert_same_prototypes(runs[0], runs[2])
    assert not torch.equal(runs[0].student.direction, runs[1].student.direction)


# -------------------------------------------------------------------------- predictions aligned with labels by id
def test_confusion_pairs_each_prediction_with_the_label_of_its_image(tmp_path: Path) -> None:
    """Each image's prediction meets its own label: a prediction store of the same images in another order is
    refused, not scored against the wrong labels."""
    ids = ["a", "b", "c", "d"]
    labels = np.arange(4, dtype=np.uint8)[:, None, None].repeat(2, 1).repeat(2, 2)  # image i: all class i
    label_store = store(tmp_path / "labels", ids, label=labels)
    hist = confusion_of(store(tmp_path / "same", ids, pred=labels), label_store, 4, 4)
    np.testing.assert_array_equal(hist, 4 * np.eye(4, dtype=np.int64))
    order = [2, 0, 3, 1]
    shuffled = store(tmp_path / "shuffled", [ids[i] for i in order], pred=labels[order])
    with pytest.raises(ValueError, match="hold different images"):
        confusion_of(shuffled, label_store, 4, 4)
