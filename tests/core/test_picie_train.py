"""PiCIE training on tiny synthetic scenes: an epoch lowers the loss, resuming is exact, bad sizes raise."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scenes import SceneStream

from unseg.core.picie import train as train_module
from unseg.core.picie.clustering import ClusterConfig
from unseg.core.picie.inference import ImageSource
from unseg.core.picie.loss import LossConfig, class_weights
from unseg.core.picie.monitor import EvalConfig
from unseg.core.picie.network import NetworkConfig, build_network
from unseg.core.picie.train import (
    EpochContext,
    TrainConfig,
    batch_loss,
    cluster_views,
    label_views,
    train_picie,
    train_views,
)
from unseg.core.picie.views import ViewConfig, draw_view_params
from unseg.core.store import ShardStore, write_store

SIDE = 32
CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def scenes(root: Path, split: str, count: int) -> ShardStore:
    write_store(SceneStream(split, count, SIDE), root, progress=False)
    return ShardStore(root)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[ShardStore, ShardStore]:
    tmp = tmp_path_factory.mktemp("picie")
    return scenes(tmp / "train", "train", 16), scenes(tmp / "val", "val", 4)


VIEWS = ViewConfig(input_size=SIDE, blur_radius=(0.05, 0.3))
CLUSTERING = ClusterConfig(num_clusters=3, num_iters=10, sample_size=400, init_batches=2, batch_size=4)
EVALUATION = EvalConfig(num_clusters=8, num_iters=10, sample_size=400, batch_size=8)


def test_one_short_epoch_lowers_the_loss(stores: tuple[ShardStore, ShardStore]) -> None:
    train, _ = stores
    net, _ = build_network(NetworkConfig(pretrained=False), seed=0)
    ctx = EpochContext(net, torch.optim.Adam(net.parameters(), lr=1e-3), ImageSource(train), VIEWS, CLUSTERING,
                       LossConfig(), TrainConfig(epochs=1, batch_size=4, progress=False), 0, CPU, None)
    params = draw_view_params(VIEWS, 0, 1, np.arange(len(train)))
    centroids = [torch.from_numpy(r.centroids) for r in cluster_views(ctx, 1, params)]
    labels = label_views(ctx, 1, params, centroids)
    assert labels.shape == (2, 16, SIDE // 4, SIDE // 4) and labels.max() < 3
    weights = [class_weights(np.bincount(labels[v].ravel(), minlength=3), "inverse") for v in (0, 1)]

    def loss_on_all() -> float:  # same images, views, labels and centroids; a copy so BN statistics stay untouched
        probe = copy.copy(ctx)
        probe.net = copy.deepcopy(ctx.net).train()
        with torch.no_grad():
            return batch_loss(probe, np.arange(16), params, labels, centroids, weights).loss.item()

    before = loss_on_all()
    mean_during = train_views(ctx, 1, params, labels, centroids, weights)
    after = loss_on_all()
    assert np.isfinite(mean_during).all()
    assert after < before


def test_label_pass_from_the_clustering_features(stores: tuple[ShardStore, ShardStore]) -> None:
    """With a cache the label pass reuses the clustering pass's features: the same labels as running the network
    again (to float tolerance at exact ties), and the same clustering."""
    train, _ = stores
    net, _ = build_network(NetworkConfig(pretrained=False), seed=0)

    def context(cache_mb: int) -> EpochContext:
        clustering = ClusterConfig(**{**CLUSTERING.__dict__, "cache_mb": cache_mb})
        return EpochContext(net, torch.optim.Adam(net.parameters()), ImageSource(train), VIEWS, clustering,
                            LossConfig(), TrainConfig(epochs=1, batch_size=4, progress=False), 0, CPU, None)

    params = draw_view_params(VIEWS, 0, 1, np.arange(len(train)))
    assert context(0).feature_cache() is None  # no room: recompute, as the reference
    ctx = context(64)
    cache = ctx.feature_cache()
    assert [tuple(c.shape) for c in cache] == [(16, 128, SIDE // 4, SIDE // 4)] * 2
    cached = cluster_views(ctx, 1, params, cache)
    recomputed = cluster_views(ctx, 1, params)
    for a, b in zip(cached, recomputed, strict=True):
        np.testing.assert_allclose(a.centroids, b.centroids, atol=1e-5)
    centroids = [torch.from_numpy(r.centroids) for r in cached]
    from_cache = label_views(ctx, 1, params, centroids, cache)
    again = label_views(ctx, 1, params, centroids)
    assert np.mean(from_cache == again) > 0.999


def small_run(train: ShardStore, val: ShardStore, epochs: int, checkpoints: Path | None,
              monitor: bool = True, clustering: ClusterConfig = CLUSTERING) -> train_module.TrainResult:
    config = TrainConfig(epochs=epochs, batch_size=4, lr=1e-3, progress=False,
                         checkpoint_dir=None if checkpoints is None else str(checkpoints))
    evaluation = EvalConfig(num_clusters=8, num_iters=10, sample_size=400, batch_size=8, monitor=monitor,
                            untrained_baseline=monitor)
    return train_picie(train, val, NetworkConfig(pretrained=False), VIEWS, clustering, LossConfig(), config,
                       evaluation, 8, 0, CPU)


def without_timings(history: dict[str, list[dict[str, float]]]) -> dict[str, list[dict[str, float]]]:
    return {k: v for k, v in history.items() if not k.endswith("_time_s")}


def test_killed_run_resumes_to_the_same_state(stores: tuple[ShardStore, ShardStore], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _, val = stores
    train = scenes(tmp_path / "train8", "train", 8)
    # 2 clustering batches of 4: the initial k-means on the first, the mini-batch update on the second
    clustering = ClusterConfig(num_clusters=3, num_iters=10, sample_size=100, init_batches=1, batch_size=4)

    def run(epochs: int, folder: str) -> train_module.TrainResult:
        return small_run(train, val, epochs, tmp_path / folder, monitor=False, clustering=clustering)

    straight = run(2, "straight")
    real_epoch = train_module.run_epoch

    def killed_in_epoch_2(ctx: EpochContext, epoch: int) -> dict[str, float]:
        if epoch == 2:
            raise KeyboardInterrupt("killed")
        return real_epoch(ctx, epoch)

    monkeypatch.setattr(train_module, "run_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(2, "resumed")
    monkeypatch.setattr(train_module, "run_epoch", real_epoch)
    (folder,) = (tmp_path / "resumed").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_0001.pt"]

    resumed = run(2, "resumed")
    assert resumed.info["resumed_from_epoch"] == 1
    assert resumed.info["fingerprint"] == straight.info["fingerprint"] == folder.name
    for name, tensor in straight.network.state_dict().items():
        assert torch.equal(tensor, resumed.network.state_dict()[name]), name
    assert without_timings(resumed.history) == without_timings(straight.history)
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_0002.pt"]  # keep_checkpoints: 1

    finished = run(2, "resumed")  # nothing left to do: loads the last epoch
    assert finished.info["resumed_from_epoch"] == 2
    assert torch.equal(finished.network.laterals[0].weight, straight.network.laterals[0].weight)


def test_history_holds_every_metric_per_epoch(stores: tuple[ShardStore, ShardStore]) -> None:
    train, val = stores
    result = small_run(train, val, 1, None)
    steps = {name: [m["step"] for m in values] for name, values in result.history.items()}
    for name in ("loss", "loss_within", "loss_cross", "cluster_time_s", "label_time_s", "train_time_s",
                 "cluster_entropy", "val_miou", "val_acc"):
        assert steps[f"picie/{name}"] == [1], name
    for name in ("untrained_kmeans_miou", "untrained_kmeans_acc", "pretrained_init"):
        assert steps[f"picie/{name}"] == [0], name
    assert result.info["init"] == "random" and result.history["picie/pretrained_init"][0]["value"] == 0.0
    assert 0 <= result.history["picie/val_miou"][0]["value"] <= 100
    assert 0 <= result.history["picie/cluster_entropy"][0]["value"] <= 1


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 17}, r"picie.train.batch_size=17 is larger than the training set \(16 images\)"),
])
def test_batch_larger_than_the_data_set_raises(stores: tuple[ShardStore, ShardStore], kwargs: dict[str, Any],
                                               match: str) -> None:
    train, val = stores
    config = TrainConfig(epochs=1, progress=False, **kwargs)
    with pytest.raises(ValueError, match=match):
        train_picie(train, val, NetworkConfig(pretrained=False), VIEWS, CLUSTERING, LossConfig(), config,
                    EVALUATION, 8, 0, CPU)
    with pytest.raises(ValueError, match=r"picie.clustering.batch_size=32 is larger"):
        train_picie(train, val, NetworkConfig(pretrained=False), VIEWS,
                    ClusterConfig(num_clusters=3, sample_size=400, batch_size=32), LossConfig(),
                    TrainConfig(epochs=1, batch_size=4, progress=False), EVALUATION, 8, 0, CPU)
