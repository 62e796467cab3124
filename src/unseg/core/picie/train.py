"""PiCIE's training loop: per epoch, cluster both views, label every pixel, train on within + cross-view CE.

[0] https://arxiv.org/abs/2103.17070;  [1] https://github.com/janghyuncho/PiCIE (train_picie.py, commit 07cc8ffb)

One epoch e (1-based):
1. draw both views' parameters of every train image for e (views.py);
2. cluster view 1 and view 2 separately, from scratch (clustering.py), network in eval mode;
3. label pass: every pixel of both views gets its nearest centroid (labels held as uint8 (2, N, h, w));
4. train: Adam over shuffled batches, network in train mode, loss of loss.py with frozen centroid classifiers;
5. checkpoint (checkpoint.py) with model, optimiser, metrics history and RNG states.
On CUDA the network's forward and the loss of the training steps run under bf16 autocast (the CPU path is plain
float32). Every pass reads its images through `ImageSource.batches`, whose worker processes (`num_workers`) read the
next batches ahead; the batches, their order and every random draw are the same with any number of workers.
All randomness is derived from (seed, epoch, purpose[, image]): the batch orders, the views, the k-means samples and
faiss seeds. A run resumed from the checkpoint of epoch e therefore continues exactly as an uninterrupted run.

Monitoring (val labels, never used to choose anything): before epoch 1 the final-evaluation protocol on the untrained
network (`picie/untrained_kmeans_*`, step 0); at step e the val scores of epoch e's view-1 clustering, i.e. of the
network after e - 1 epochs (`picie/val_*`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from unseg.core.picie.checkpoint import load_latest, restore_rng_states, rng_states, save_checkpoint
from unseg.core.picie.clustering import ClusterConfig, ClusterResult, assign_labels, cluster_entropy, cluster_view
from unseg.core.picie.inference import ImageSource
from unseg.core.picie.loss import LossConfig, LossTerms, class_weights, picie_loss
from unseg.core.picie.monitor import EvalConfig, ValMonitor
from unseg.core.picie.network import NetworkConfig, PiCIENet, build_network
from unseg.core.picie.views import ViewConfig, ViewParams, draw_view_params, transform_features, view_input
from unseg.core.store import ShardStore, fingerprint

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class TrainConfig:
    """Attributes:
        epochs: epochs to reach (paper 10); raising it later continues a finished run from its last checkpoint.
        batch_size: images per optimisation step (paper 128).
        lr: Adam learning rate (paper 1e-4 COCO, 1e-3 Cityscapes).
        checkpoint_dir: parent of the per-fingerprint checkpoint folders; None: no checkpoints, no resume.
        keep_checkpoints: newest checkpoints kept per folder.
        progress: tqdm bars.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-4
    checkpoint_dir: str | None = None
    keep_checkpoints: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.keep_checkpoints < 1 or not self.lr > 0:
            raise ValueError(f"picie train: need epochs >= 0, batch_size >= 1, keep_checkpoints >= 1 and lr > 0, got "
                             f"{self.epochs}, {self.batch_size}, {self.keep_checkpoints}, {self.lr}")


@dataclass
class TrainResult:
    """network: trained, on the CPU, eval mode; history: metric -> [{"value", "step"}]; info: init, fingerprint, ..."""

    network: PiCIENet
    history: dict[str, list[dict[str, float]]]
    info: dict[str, Any] = field(default_factory=dict)


def derive_seed(seed: int, *purpose: int) -> int:
    """A 31-bit seed for one purpose, e.g. (epoch, view, stage)."""
    return int(np.random.SeedSequence([int(seed), *map(int, purpose)]).generate_state(1)[0] % (2**31 - 1))


def _permutation(seed: int, epoch: int, purpose: int, n: int) -> np.ndarray:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), 1000 + purpose])).permutation(n)


def _add(history: dict[str, list[dict[str, float]]], metrics: dict[str, float], step: int) -> None:
    for name, value in metrics.items():
        history.setdefault(name, []).append({"value": float(value), "step": int(step)})


@dataclass
class EpochContext:
    """Everything an epoch needs: the network and optimiser, the train images, the parameter blocks."""

    net: PiCIENet
    optimizer: torch.optim.Optimizer
    source: ImageSource
    views: ViewConfig
    clustering: ClusterConfig
    loss: LossConfig
    train: TrainConfig
    seed: int
    device: torch.device
    monitor: ValMonitor | None

    def feature_cache(self) -> list[torch.Tensor] | None:
        """Room for both views' features of every image (float32, on the device) when they fit in
        `clustering.cache_mb`; None otherwise."""
        n, grid = len(self.source), self.views.input_size // self.net.stride
        shape = (n, self.net.dim, grid, grid)
        if 2 * math.prod(shape) * 4 > self.clustering.cache_mb * 2**20:
            return None
        return [torch.empty(shape, dtype=torch.float32, device=self.device) for _ in range(2)]

    def bar(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, unit="img", desc=desc, disable=not self.train.progress, leave=False)

    @torch.no_grad()
    def view_features(self, params: ViewParams, order: np.ndarray, view: int,
                      bar: tqdm) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """(rows, features (B, D, h, w)) of view 1 (view=0) or T(view 2) (view=1), eval mode, in `order`."""
        self.net.eval()
        size = self.clustering.batch_size
        batches = [order[start:start + size] for start in range(0, len(order), size)]
        for rows, images in zip(batches, self.source.batches(batches, self.device), strict=True):
            sub = params.subset(rows)
            feats = self.net(view_input(images, sub, view, self.views))
            yield rows, (transform_features(feats, sub) if view == 1 else feats)
            bar.update(len(rows))


def cluster_views(ctx: EpochContext, epoch: int, params: ViewParams,
                  cache: list[torch.Tensor] | None = None) -> list[ClusterResult]:
    """Step 2: the clustering of view 1 and of view 2 (each in its own shuffled order); with `cache` (see
    EpochContext.feature_cache) every image's features of each view are kept there for the label pass."""
    n = len(ctx.source)
    bar = ctx.bar(2 * n, f"picie {epoch}/{ctx.train.epochs} clustering")
    results = []

    def kept(view: int, rows: np.ndarray, feats: torch.Tensor) -> torch.Tensor:
        if cache is not None:
            cache[view][torch.as_tensor(rows, device=cache[view].device)] = feats
        return feats

    for view in (0, 1):
        order = _permutation(ctx.seed, epoch, 1 + view, n)
        feats = (kept(view, rows, f) for rows, f in ctx.view_features(params, order, view, bar))
        results.append(cluster_view(feats, math.ceil(n / ctx.clustering.batch_size), ctx.clustering,
                                    derive_seed(ctx.seed, epoch, view), ctx.device.type == "cuda"))
    bar.close()
    return results


def label_views(ctx: EpochContext, epoch: int, params: ViewParams, centroids: list[torch.Tensor],
                cache: list[torch.Tensor] | None = None) -> np.ndarray:
    """Step 3: labels (2, N, h, w) of every pixel of both views (uint8, int16 when K > 256), from the features the
    clustering pass kept in `cache`, or by running the network again."""
    n, k = len(ctx.source), ctx.clustering.num_clusters
    bar = ctx.bar(2 * n, f"picie {epoch}/{ctx.train.epochs} labels")
    grid = ctx.views.input_size // ctx.net.stride
    labels = np.empty((2, n, grid, grid), dtype=np.uint8 if k <= 256 else np.int16)
    size = ctx.clustering.batch_size
    for view in (0, 1):
        batches = (ctx.view_features(params, np.arange(n), view, bar) if cache is None else
                   ((np.arange(s, min(s + size, n)), cache[view][s:s + size]) for s in range(0, n, size)))
        for rows, feats in batches:
            labels[view, rows] = assign_labels(feats, centroids[view]).cpu().numpy()
            if cache is not None:
                bar.update(len(rows))
    bar.close()
    return labels


def batch_loss(ctx: EpochContext, rows: np.ndarray, params: ViewParams, labels: np.ndarray,
               centroids: list[torch.Tensor], weights: list[torch.Tensor | None],
               base: torch.Tensor | None = None) -> LossTerms:
    """The loss of the images `rows` (network in whatever mode it is); `base`: their images (B, 3, S, S) when
    already read. On CUDA the forward passes and the loss run under bf16 autocast (the views are made before, in
    float32)."""
    sub = params.subset(rows)
    base = ctx.source.batch(rows, ctx.device) if base is None else base
    x1, x2 = view_input(base, sub, 0, ctx.views), view_input(base, sub, 1, ctx.views)
    y1, y2 = (torch.from_numpy(labels[v, rows].astype(np.int64)).to(ctx.device) for v in (0, 1))
    with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.device.type == "cuda"):
        f1 = ctx.net(x1)
        f2 = transform_features(ctx.net(x2), sub)
        return picie_loss(f1, f2, y1, y2, centroids[0], centroids[1], weights[0], weights[1])


def train_views(ctx: EpochContext, epoch: int, params: ViewParams, labels: np.ndarray, centroids: list[torch.Tensor],
                weights: list[torch.Tensor | None]) -> np.ndarray:
    """Step 4: one pass of Adam over shuffled batches; returns the mean (loss, within, cross)."""
    n = len(ctx.source)
    order = _permutation(ctx.seed, epoch, 0, n)
    totals = np.zeros(3)
    bar = ctx.bar(n, f"picie {epoch}/{ctx.train.epochs} train")
    ctx.net.train()
    batches = [np.sort(order[begin:begin + ctx.train.batch_size]) for begin in range(0, n, ctx.train.batch_size)]
    for rows, base in zip(batches, ctx.source.batches(batches, ctx.device), strict=True):
        terms = batch_loss(ctx, rows, params, labels, centroids, weights, base)
        ctx.optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        ctx.optimizer.step()
        totals += len(rows) * np.array([terms.loss.item(), terms.within.item(), terms.cross.item()])
        bar.update(len(rows))
        bar.set_postfix(loss=f"{terms.loss.item():.4f}")
    bar.close()
    ctx.net.eval()
    return totals / n


def run_epoch(ctx: EpochContext, epoch: int) -> dict[str, float]:
    n, k = len(ctx.source), ctx.clustering.num_clusters
    params = draw_view_params(ctx.views, ctx.seed, epoch, np.arange(n))
    metrics: dict[str, float] = {}

    start = time.perf_counter()
    cache = ctx.feature_cache()
    results = cluster_views(ctx, epoch, params, cache)
    metrics["picie/cluster_time_s"] = time.perf_counter() - start
    centroids = [torch.from_numpy(r.centroids).to(ctx.device) for r in results]

    start = time.perf_counter()
    labels = label_views(ctx, epoch, params, centroids, cache)
    del cache
    counts = [np.bincount(labels[v].ravel().astype(np.int64), minlength=k) for v in (0, 1)]
    metrics["picie/label_time_s"] = time.perf_counter() - start
    metrics["picie/cluster_entropy"] = float(np.mean([cluster_entropy(c) for c in counts]))
    metrics["picie/kmeans_objective"] = float(np.mean([r.objective for r in results]))
    if ctx.monitor is not None:
        scores = ctx.monitor.score(ctx.net, results[0].centroids)
        metrics["picie/val_miou"], metrics["picie/val_acc"] = scores["miou"], scores["acc"]

    start = time.perf_counter()
    weights = [class_weights(c, ctx.loss.class_weights) for c in counts]
    losses = train_views(ctx, epoch, params, labels, centroids, weights)
    metrics["picie/train_time_s"] = time.perf_counter() - start
    metrics["picie/loss"], metrics["picie/loss_within"], metrics["picie/loss_cross"] = (float(v) for v in losses)
    logger.info("PiCIE epoch %d/%d: loss %.4f (within %.4f, cross %.4f), clustering %.1fs, labels %.1fs, "
                "train %.1fs (%.1f img/s)%s", epoch, ctx.train.epochs, *losses, metrics["picie/cluster_time_s"],
                metrics["picie/label_time_s"], metrics["picie/train_time_s"], n / metrics["picie/train_time_s"],
                f", val mIoU {metrics['picie/val_miou']:.2f} (epoch {epoch} clustering)" if ctx.monitor else "")
    return metrics


def run_fingerprint(network: NetworkConfig, init: str, views: ViewConfig, clustering: ClusterConfig,
                    loss: LossConfig, train: TrainConfig, evaluation: EvalConfig, seed: int, train_store: ShardStore,
                    val_store: ShardStore | None) -> str:
    """What identifies a training run's checkpoints: everything that changes its state, not `epochs` (so raising
    it continues), the checkpoint settings or the device."""
    steps = {k: v for k, v in asdict(train).items() if k in ("batch_size", "lr")}
    return fingerprint(CHECKPOINT_FORMAT, asdict(network), init, asdict(views), asdict(clustering), asdict(loss),
                       steps, asdict(evaluation), seed, train_store.fingerprint,
                       None if val_store is None else val_store.fingerprint)


def train_picie(train: ShardStore, val: ShardStore | None, network: NetworkConfig, views: ViewConfig,
                clustering: ClusterConfig, loss: LossConfig, train_config: TrainConfig, evaluation: EvalConfig,
                num_classes: int, seed: int, device: torch.device, num_workers: int = 0) -> TrainResult:
    """Trains PiCIE on the train images (labels are never read), resuming from a checkpoint of the same fingerprint.

    Args:
        train: prepared train store (field image uint8 (S, S, 3)).
        val: prepared val store; with a `label` field it is used for monitoring only; None: no monitoring.
        network, views, clustering, loss, train_config, evaluation: the parameter blocks.
        num_classes: classes of the val labels.
        seed: seeds everything.
        device: where the network runs.
        num_workers: processes reading the images ahead (unseg.core.loader); the results do not depend on it.

    Returns:
        TrainResult (history: per-epoch metrics, see the module docstring).

    Raises:
        ValueError: a batch size larger than the data set, too few sampled pixels for K, a bad parameter.
    """
    source = ImageSource(train, views.base_size, num_workers)
    n = len(source)
    for name, size in (("picie.train.batch_size", train_config.batch_size),
                       ("picie.clustering.batch_size", clustering.batch_size)):
        if size > n:
            raise ValueError(f"{name}={size} is larger than the training set ({n} images); lower it")
    net, init = build_network(network, seed)
    net.to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=train_config.lr)
    run_id = run_fingerprint(network, init, views, clustering, loss, train_config, evaluation, seed, train, val)
    directory = Path(train_config.checkpoint_dir) / run_id if train_config.checkpoint_dir else None
    history: dict[str, list[dict[str, float]]] = {}
    first = 1
    payload = load_latest(directory, device, train_config.epochs) if directory else None
    if payload is not None and payload.get("fingerprint") == run_id:
        net.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        history = payload["history"]
        restore_rng_states(payload["rng"])
        first = int(payload["epoch"]) + 1
        logger.info("PiCIE: resuming from %s (epoch %d of %d done)", directory, first - 1, train_config.epochs)
    has_labels = val is not None and "label" in val.fields
    monitor = (ValMonitor(val, num_classes, views.input_size, evaluation, device, num_workers)
               if has_labels and (evaluation.monitor or evaluation.untrained_baseline) else None)
    ctx = EpochContext(net, optimizer, source, views, clustering, loss, train_config, seed, device,
                       monitor if evaluation.monitor else None)
    if first == 1:
        _add(history, {"picie/pretrained_init": float(init != "random")}, 0)
        if monitor is not None and evaluation.untrained_baseline:
            scores = monitor.fresh_kmeans(net, ImageSource(train, views.input_size, num_workers),
                                          derive_seed(seed, 0, 99))
            _add(history, {"picie/untrained_kmeans_miou": scores["miou"],
                           "picie/untrained_kmeans_acc": scores["acc"]}, 0)
            logger.info("PiCIE: untrained network, fresh k-means: val mIoU %.2f, Acc %.2f", scores["miou"],
                        scores["acc"])
    for epoch in range(first, train_config.epochs + 1):
        _add(history, run_epoch(ctx, epoch), epoch)
        if directory is not None:
            save_checkpoint(directory, epoch, {
                "epoch": epoch, "fingerprint": run_id, "model": net.state_dict(),
                "optimizer": optimizer.state_dict(), "history": history, "rng": rng_states(), "init": init,
            }, keep=train_config.keep_checkpoints)
    info = {"init": init, "fingerprint": run_id, "checkpoint_dir": None if directory is None else str(directory),
            "resumed_from_epoch": first - 1, "epochs": train_config.epochs, "train_images": n}
    return TrainResult(net.cpu().eval(), history, info)
