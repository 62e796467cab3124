"""PiCIE's epoch wiring on coordinate ramps with a stub network (features = the input): which view, which labels,
which centroids and where T go, against hand-computed features, labels and losses."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from picie_helpers import GEOMETRY_ONLY, INNER_BOXES, INNER_FLIPS, ArraySource, StubNet, hand_params, ramp, ramp_crop

from unseg.core.picie import train as train_module
from unseg.core.picie.clustering import ClusterConfig, ClusterResult, cluster_entropy
from unseg.core.picie.loss import LossConfig, LossTerms, class_weights
from unseg.core.picie.monitor import EvalConfig
from unseg.core.picie.network import NetworkConfig
from unseg.core.picie.train import (
    EpochContext,
    TrainConfig,
    batch_loss,
    cluster_views,
    derive_seed,
    label_views,
    run_epoch,
    run_fingerprint,
    train_views,
)
from unseg.core.picie.views import ViewConfig, ViewParams, draw_view_params

CPU = torch.device("cpu")
SIDE = 32
VIEWS = ViewConfig(input_size=SIDE, **GEOMETRY_ONLY)
CLUSTERING = ClusterConfig(num_clusters=2, num_iters=5, sample_size=200, init_batches=1, batch_size=2)
TRAIN = TrainConfig(epochs=2, batch_size=2, lr=0.05, progress=False)
# labels by hand: view 1's centroids say "x > y" -> 0, view 2's the opposite, so a view labelled with the other
# view's centroids, or without T, comes out different
CENTROIDS = [torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def context(n: int = 3, clustering: ClusterConfig = CLUSTERING, loss: LossConfig = LossConfig(),  # noqa: B008
            train: TrainConfig = TRAIN, seed: int = 0, monitor: Any = None) -> EpochContext:
    net = StubNet(n)
    return EpochContext(net, torch.optim.Adam(net.parameters(), lr=train.lr), ArraySource(ramp(n, SIDE)), VIEWS,
                        clustering, loss, train, seed, CPU, monitor)


def box_features(params: ViewParams, i: int, n: int) -> torch.Tensor:
    """(3, SIDE, SIDE): image i of `ramp(n)` in its view-1 box, flipped where asked: what f(view 1) and T(f(view 2))
    of the identity network must both be."""
    xs, ys = ramp_crop(tuple(params.box[i]), bool(params.flip[i]), SIDE, SIDE)
    return torch.stack([xs, ys, torch.full_like(xs, i / n)])


def hand_labels(params: ViewParams, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels of image i under CENTROIDS: view 1 is 1 where y > x, view 2 where x > y (on the aligned pixels)."""
    xs, ys = ramp_crop(tuple(params.box[i]), bool(params.flip[i]), SIDE, SIDE)
    return (ys > xs).numpy().astype(np.uint8), (xs > ys).numpy().astype(np.uint8)


def hand_ce(feats: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor,
            weight: torch.Tensor | None) -> torch.Tensor:
    logits = torch.einsum("bdhw,kd->bkhw", feats / feats.norm(dim=1, keepdim=True), centroids)
    return F.cross_entropy(logits, labels, weight=weight)


# ------------------------------------------------------------------------------------------------------- the loss
def loss_case() -> dict[str, Any]:
    """Three ramps, inner boxes; view 1 with contrast 0.5, view 2 with saturation 0.5 (so f1 != T(f2)); random
    labels per view; different centroids and class weights per view."""
    n = 3
    jitter = np.zeros((2, n, 4))
    jitter[..., :3] = 1.0
    jitter[0, :, 1] = 0.5
    jitter[1, :, 2] = 0.5
    params = hand_params(n, INNER_BOXES, INNER_FLIPS, jitter=jitter)
    gen = torch.Generator().manual_seed(0)
    return {
        "params": params,
        "labels": torch.randint(0, 3, (2, n, SIDE, SIDE), generator=gen).numpy().astype(np.uint8),
        "centroids": [F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.3, 0.3, 1.0]]), dim=1),
                      F.normalize(torch.tensor([[0.0, 1.0, 0.2], [1.0, 0.0, 0.0], [-1.0, 1.0, 0.5]]), dim=1)],
        "weights": [torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.3, 1.0, 3.0])],
    }


def hand_views(params: ViewParams, rows: np.ndarray, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """f1 and T(f2) of loss_case by hand: contrast 0.5 blends with the base image's mean luma (the ramp's x and y
    average 1/2), saturation 0.5 with each pixel's luma; then the box."""
    f1, f2 = [], []
    for i in rows:
        box = box_features(params, int(i), n)
        mean_luma = 0.2989 * 0.5 + 0.587 * 0.5 + 0.114 * i / n
        f1.append(0.5 * box + 0.5 * mean_luma)
        luma = 0.2989 * box[0] + 0.587 * box[1] + 0.114 * box[2]
        f2.append(0.5 * box + 0.5 * luma)
    return torch.stack(f1), torch.stack(f2)


def test_batch_loss_matches_the_hand_computed_within_and_cross_terms() -> None:
    """within = [CE(C1 f1, y1) + CE(C2 f2, y2)] / 2, cross = [CE(C2 f1, y2) + CE(C1 f2, y1)] / 2 with f1 the view-1
    features and f2 = T(view-2 features) computed by hand, on a subset of rows."""
    case = loss_case()
    rows = np.array([0, 2])
    terms = batch_loss(context(), rows, case["params"], case["labels"], case["centroids"], case["weights"])
    f1, f2 = hand_views(case["params"], rows, 3)
    y1, y2 = (torch.from_numpy(case["labels"][v, rows]).long() for v in (0, 1))
    (c1, c2), (w1, w2) = case["centroids"], case["weights"]
    within = (hand_ce(f1, c1, y1, w1) + hand_ce(f2, c2, y2, w2)) / 2
    cross = (hand_ce(f1, c2, y2, w2) + hand_ce(f2, c1, y1, w1)) / 2
    assert terms.within.item() == pytest.approx(within.item(), rel=1e-5)
    assert terms.cross.item() == pytest.approx(cross.item(), rel=1e-5)
    assert terms.loss.item() == pytest.approx((within + cross).item() / 2, rel=1e-5)


def test_batch_loss_feeds_each_view_its_own_features_labels_centroids_and_weights(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What reaches picie_loss: f1 = f(view 1), f2 = T(f(view 2)) (hand-computed), y1 / y2 = the label rows of view
    1 / view 2, C1 / C2 and w1 / w2 in view order."""
    case = loss_case()
    seen: dict[str, Any] = {}
    real = train_module.picie_loss

    def spy(*args: Any) -> LossTerms:
        seen.update(zip(("f1", "f2", "y1", "y2", "c1", "c2", "w1", "w2"), args, strict=True))
        return real(*args)

    monkeypatch.setattr(train_module, "picie_loss", spy)
    rows = np.array([1, 2])
    batch_loss(context(), rows, case["params"], case["labels"], case["centroids"], case["weights"])
    f1, f2 = hand_views(case["params"], rows, 3)
    torch.testing.assert_close(seen["f1"], f1, atol=1e-5, rtol=0)
    torch.testing.assert_close(seen["f2"], f2, atol=1e-5, rtol=0)
    for v, name in enumerate(("y1", "y2")):
        assert seen[name].dtype == torch.int64
        np.testing.assert_array_equal(seen[name].numpy(), case["labels"][v, rows])
    assert seen["c1"] is case["centroids"][0] and seen["c2"] is case["centroids"][1]
    assert seen["w1"] is case["weights"][0] and seen["w2"] is case["weights"][1]


# ------------------------------------------------------------------------------------- clustering and label passes
def test_label_pass_labels_each_view_with_its_own_centroids_after_t() -> None:
    """Every pixel of view 1 gets its nearest view-1 centroid, every pixel of T(view 2) its nearest view-2 centroid
    (hand-computed on the box of a ramp); the network runs in eval mode."""
    ctx = context()
    ctx.net.train()
    params = hand_params(3, INNER_BOXES, INNER_FLIPS)
    labels = label_views(ctx, 1, params, CENTROIDS)
    assert labels.shape == (2, 3, SIDE, SIDE) and labels.dtype == np.uint8
    for i in range(3):
        view1, view2 = hand_labels(params, i)
        np.testing.assert_array_equal(labels[0, i], view1)
        np.testing.assert_array_equal(labels[1, i], view2)
    assert ctx.net.calls and not any(training for training, _ in ctx.net.calls)
    assert [len(ids) for _, ids in ctx.net.calls] == [2, 1, 2, 1]  # clustering.batch_size images per pass


def test_clustering_pass_feeds_both_views_in_shuffled_batches_and_fills_the_cache(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """cluster_view gets view 1's features then T(view 2)'s (hand-computed), every image once per view in batches
    of clustering.batch_size, each view in its own order, with its own seed per (epoch, view); the cache ends up
    holding every image's features at its index, and the label pass from it gives the hand labels."""
    n = 5
    calls: list[dict[str, Any]] = []
    real = train_module.cluster_view

    def spy(batches: Iterator[torch.Tensor], num_batches: int, config: ClusterConfig, seed: int,
            use_gpu: bool = False) -> ClusterResult:
        batches = list(batches)
        result = real(iter(batches), num_batches, config, seed, use_gpu)
        calls.append({"batches": batches, "num_batches": num_batches, "config": config, "seed": seed,
                      "gpu": use_gpu, "result": result})
        return result

    monkeypatch.setattr(train_module, "cluster_view", spy)
    ctx = context(n, clustering=ClusterConfig(**{**CLUSTERING.__dict__, "cache_mb": 1}))
    params = hand_params(n, INNER_BOXES + [(0.2, 0.25, 0.55), (0.12, 0.1, 0.8)], INNER_FLIPS + [False, True])
    cache = ctx.feature_cache()
    results = cluster_views(ctx, 1, params, cache)
    assert [c["result"] for c in calls] == results and len(results) == 2
    orders = []
    for call in calls:
        assert call["num_batches"] == 3 and call["config"] is ctx.clustering and call["gpu"] is False
        assert [len(b) for b in call["batches"]] == [2, 2, 1]
        feats = torch.cat(call["batches"])
        order = torch.round(feats[:, 2].mean(dim=(1, 2)) * n).long().tolist()
        assert sorted(order) == list(range(n))
        for row, i in enumerate(order):
            torch.testing.assert_close(feats[row], box_features(params, i, n), atol=1e-5, rtol=0)
        orders.append(order)
    assert orders[0] != orders[1] and list(range(n)) not in orders
    for view in (0, 1):
        for i in range(n):
            torch.testing.assert_close(cache[view][i], box_features(params, i, n), atol=1e-5, rtol=0)
    seeds = [c["seed"] for c in calls]
    cluster_views(ctx, 2, params)
    assert len(set(seeds + [c["seed"] for c in calls[2:]])) == 4  # per epoch and view
    assert [c["seed"] for c in calls[2:]] == [derive_seed(0, 2, 0), derive_seed(0, 2, 1)]
    ctx.net.calls.clear()
    labels = label_views(ctx, 1, params, CENTROIDS, cache)
    assert not ctx.net.calls  # from the cache, no forward pass
    for i in range(n):
        np.testing.assert_array_equal(labels[:, i], np.stack(hand_labels(params, i)))


def test_label_dtype_holds_every_cluster_index() -> None:
    """uint8 labels up to K = 256, int16 beyond (labels 256 and 299 stay what they are)."""
    params = hand_params(3, INNER_BOXES, INNER_FLIPS)
    for k, dtype in ((256, np.uint8), (257, np.int16), (300, np.int16)):
        ctx = context(clustering=ClusterConfig(num_clusters=k, sample_size=k, batch_size=2))
        centroids = torch.zeros(k, 3)
        centroids[:, 2] = -1.0  # never nearest
        centroids[k - 1, 0] = centroids[k - 2, 1] = 1.0
        centroids[k - 1, 2] = centroids[k - 2, 2] = 0.0
        labels = label_views(ctx, 1, params, [centroids, centroids])
        assert labels.dtype == dtype
        view1, _ = hand_labels(params, 0)
        np.testing.assert_array_equal(labels[0, 0], np.where(view1 == 1, k - 2, k - 1))


def test_feature_cache_only_when_both_views_fit() -> None:
    """Both views of 8 images x 16 channels x 32 x 32 float32 are exactly 1 MiB: cached with cache_mb=1, not with
    one image more or cache_mb=0."""
    def ctx(n: int, cache_mb: int) -> EpochContext:
        net = StubNet(n, dim=16)
        return EpochContext(net, torch.optim.Adam(net.parameters()), ArraySource(torch.zeros(n, 3, SIDE, SIDE)),
                            VIEWS, ClusterConfig(**{**CLUSTERING.__dict__, "cache_mb": cache_mb}), LossConfig(),
                            TRAIN, 0, CPU, None)

    cache = ctx(8, 1).feature_cache()
    assert cache is not None and len(cache) == 2
    for tensor in cache:
        assert tuple(tensor.shape) == (8, 16, SIDE, SIDE) and tensor.dtype == torch.float32
    assert cache[0].data_ptr() != cache[1].data_ptr()
    assert ctx(9, 1).feature_cache() is None
    assert ctx(8, 0).feature_cache() is None
    assert ctx(8, 2).feature_cache() is not None


# ----------------------------------------------------------------------------------------------------- training
def test_train_pass_is_one_adam_step_per_shuffled_sorted_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every image once per epoch in batches of train.batch_size (rows sorted, order shuffled per (seed, epoch)),
    the network in train mode for the steps and eval after, a zero_grad / backward / step per batch (the same
    parameters as a hand-written Adam loop) and the mean of the batch losses weighted by batch size."""
    n = 5
    params = hand_params(n, INNER_BOXES + [(0.2, 0.25, 0.55), (0.12, 0.1, 0.8)], INNER_FLIPS + [False, True])
    seen: list[tuple[np.ndarray, LossTerms, bool]] = []
    real = train_module.batch_loss

    def spy(ctx: EpochContext, rows: np.ndarray, *args: Any) -> LossTerms:
        terms = real(ctx, rows, *args)
        seen.append((rows.copy(), terms, ctx.net.training))
        return terms

    monkeypatch.setattr(train_module, "batch_loss", spy)
    ctx = context(n)
    labels = label_views(ctx, 1, params, CENTROIDS)
    weights = [class_weights(np.bincount(labels[v].ravel(), minlength=2), "inverse") for v in (0, 1)]
    means = train_views(ctx, 1, params, labels, CENTROIDS, weights)
    assert not ctx.net.training
    assert [len(rows) for rows, _, _ in seen] == [2, 2, 1] and all(training for _, _, training in seen)
    assert all(np.all(np.diff(rows) > 0) for rows, _, _ in seen)
    order = np.concatenate([rows for rows, _, _ in seen])
    assert sorted(order) == list(range(n))
    expected = sum(len(rows) * np.array([t.loss.item(), t.within.item(), t.cross.item()]) for rows, t, _ in seen) / n
    np.testing.assert_allclose(means, expected, rtol=1e-6)

    replica = context(n)  # the hand-written loop over the same batches
    for rows, _, _ in seen:
        loss = real(replica, rows, params, labels, CENTROIDS, weights).loss
        replica.optimizer.zero_grad()
        loss.backward()
        replica.optimizer.step()
    assert ctx.net.bias.abs().sum() > 0.01
    torch.testing.assert_close(ctx.net.bias, replica.net.bias)

    def batches(seed: int, epoch: int) -> list[list[int]]:
        seen.clear()
        train_views(context(n, seed=seed), epoch, params, labels, CENTROIDS, weights)
        return [rows.tolist() for rows, _, _ in seen]

    first = [rows.tolist() for rows in np.split(order, [2, 4])]
    assert batches(0, 1) == first
    assert batches(0, 2) != first and batches(1, 1) != first


class FakeMonitor:
    """Records the centroids it is asked to score; fixed scores."""

    def __init__(self) -> None:
        self.centroids: list[np.ndarray] = []

    def score(self, net: torch.nn.Module, centroids: np.ndarray) -> dict[str, float]:
        self.centroids.append(centroids)
        return {"miou": 12.5, "acc": 40.0}


def test_epoch_draws_views_once_and_passes_counts_weights_and_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_epoch: the views of (seed, epoch) drawn once and used by all three passes, the clustering pass's
    feature cache handed to the label pass; the label pass with each view's centroids; class weights (of
    loss.class_weights) from each view's label counts over all K clusters; the view-1 clustering scored on val;
    metrics from the right sources."""
    n, calls = 4, {}
    results = [ClusterResult(np.array([[1, 0, 0], [0, 1, 0], [0, 0, -1]], np.float32), np.ones(3), 10, 20, 1, 0.2),
               ClusterResult(np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1]], np.float32), np.ones(3), 10, 20, 1, 0.4)]
    real_labels = train_module.label_views

    def fake_cluster(ctx: EpochContext, epoch: int, params: ViewParams, cache: Any = None) -> list[ClusterResult]:
        calls["cluster"], calls["cluster_cache"] = params, cache
        return results

    def labels_spy(ctx: EpochContext, epoch: int, params: ViewParams, centroids: list[torch.Tensor],
                   cache: Any = None) -> np.ndarray:
        calls["label"], calls["label_cache"] = params, cache
        calls["labels"] = real_labels(ctx, epoch, params, centroids)  # the fake clustering filled no cache
        return calls["labels"]

    def fake_train(ctx: EpochContext, epoch: int, params: ViewParams, labels: np.ndarray,
                   centroids: list[torch.Tensor], weights: list[torch.Tensor | None]) -> np.ndarray:
        calls["train"] = (params, labels, centroids, weights)
        return np.array([1.0, 2.0, 3.0])

    monkeypatch.setattr(train_module, "cluster_views", fake_cluster)
    monkeypatch.setattr(train_module, "label_views", labels_spy)
    monkeypatch.setattr(train_module, "train_views", fake_train)
    monitor = FakeMonitor()
    ctx = context(n, clustering=ClusterConfig(num_clusters=3, sample_size=10, batch_size=2, cache_mb=1),
                  loss=LossConfig(class_weights="frequency"), seed=7, monitor=monitor)
    metrics = run_epoch(ctx, 3)

    drawn = draw_view_params(VIEWS, 7, 3, np.arange(n))
    assert calls["cluster"] is calls["label"] is calls["train"][0]
    assert calls["cluster_cache"] is not None and calls["label_cache"] is calls["cluster_cache"]  # cache_mb: room
    np.testing.assert_array_equal(calls["cluster"].box, drawn.box)
    np.testing.assert_array_equal(calls["cluster"].flip, drawn.flip)
    labels = calls["labels"]
    assert calls["train"][1] is labels
    for v in (0, 1):
        torch.testing.assert_close(calls["train"][2][v], torch.from_numpy(results[v].centroids))
    counts = [np.bincount(labels[v].ravel(), minlength=3) for v in (0, 1)]
    assert counts[0][2] == counts[1][2] == 0 and counts[0][0] != counts[1][0]  # cluster 2 empty, views differ
    for v in (0, 1):
        torch.testing.assert_close(calls["train"][3][v], class_weights(counts[v], "frequency"))
    assert metrics["picie/cluster_entropy"] == pytest.approx(np.mean([cluster_entropy(c) for c in counts]))
    assert metrics["picie/kmeans_objective"] == pytest.approx(0.3)
    assert (metrics["picie/loss"], metrics["picie/loss_within"], metrics["picie/loss_cross"]) == (1.0, 2.0, 3.0)
    assert (metrics["picie/val_miou"], metrics["picie/val_acc"]) == (12.5, 40.0)
    assert len(monitor.centroids) == 1 and monitor.centroids[0] is results[0].centroids
    for name in ("cluster", "label", "train"):
        assert 0 <= metrics[f"picie/{name}_time_s"] < 600
    ctx.monitor = None
    assert not any(name.startswith("picie/val_") for name in run_epoch(ctx, 3))


# ------------------------------------------------------------------------------------------ seeds and identities
def test_derived_seeds_are_31_bit_and_differ_per_purpose() -> None:
    seeds = [derive_seed(s, e, v) for s in (0, 1) for e in (1, 2) for v in (0, 1)]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= s < 2**31 - 1 for s in seeds)
    assert derive_seed(3, 1, 0) == derive_seed(3, 1, 0) != derive_seed(3, 0, 1)
    assert max(derive_seed(s, 0) for s in range(200)) > 2**30  # uses the 31 bits


def test_train_config_bounds() -> None:
    TrainConfig(epochs=0, batch_size=1, keep_checkpoints=1, lr=1e-9)
    for kwargs in ({"epochs": -1}, {"batch_size": 0}, {"keep_checkpoints": 0}, {"lr": 0.0}, {"lr": -1.0}):
        with pytest.raises(ValueError, match=r"picie train: need epochs >= 0, batch_size >= 1, keep_checkpoints "
                                             r">= 1 and lr > 0, got"):
            TrainConfig(**kwargs)


def test_run_fingerprint_follows_the_state_not_the_length_or_checkpointing() -> None:
    """A run's identity changes with every block, the init, the seed and the data, but not with `epochs` (so
    raising it continues), the checkpoint settings or the progress bars."""
    base = {"network": NetworkConfig(pretrained=False), "init": "random", "views": VIEWS, "clustering": CLUSTERING,
            "loss": LossConfig(), "train": TRAIN, "evaluation": EvalConfig(num_clusters=4), "seed": 0,
            "train_store": SimpleNamespace(fingerprint="train"), "val_store": SimpleNamespace(fingerprint="val")}
    reference = run_fingerprint(**base)
    assert run_fingerprint(**base) == reference
    for name, value in (("epochs", 9), ("checkpoint_dir", "/x"), ("keep_checkpoints", 3), ("progress", True)):
        train = TrainConfig(**{**TRAIN.__dict__, name: value})
        assert run_fingerprint(**{**base, "train": train}) == reference, name
    changed = {
        "network": NetworkConfig(pretrained=False, arch="resnet50"), "init": "imagenet",
        "views": ViewConfig(input_size=64, **GEOMETRY_ONLY),
        "clustering": ClusterConfig(**{**CLUSTERING.__dict__, "num_clusters": 3}),
        "loss": LossConfig(class_weights="none"), "train": TrainConfig(**{**TRAIN.__dict__, "batch_size": 3}),
        "evaluation": EvalConfig(num_clusters=5), "seed": 1, "train_store": SimpleNamespace(fingerprint="other"),
        "val_store": None,
    }
    prints = {run_fingerprint(**{**base, name: value}) for name, value in changed.items()}
    prints.add(run_fingerprint(**{**base, "train": TrainConfig(**{**TRAIN.__dict__, "lr": 0.1})}))
    prints.add(run_fingerprint(**{**base, "val_store": SimpleNamespace(fingerprint="val2")}))
    assert len(prints) == len(changed) + 2 and reference not in prints
