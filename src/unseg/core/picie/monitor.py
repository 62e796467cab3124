"""Monitoring of PiCIE training on val labels (never used to pick a model) and the final evaluation's k-means.

- `EvalConfig`: the paper's final evaluation: a fresh k-means with K_test clusters on un-augmented train features,
  val features assigned and upsampled bilinearly (scores) to the crop, argmax, Hungarian matching.
- `ValMonitor.score`: val Acc / mIoU of a given clustering (the current epoch's view-1 centroids).
- `ValMonitor.fresh_kmeans`: the final-evaluation protocol on the network as it is; run on the untrained network it
  gives the `kmeans`-on-untrained-features baseline that training must beat.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from unseg.core.kmeans import KMeansConfig, fit_kmeans, predict_labels
from unseg.core.metrics import ConfusionAccumulator, scores_from_confusion
from unseg.core.picie.clustering import sample_pixels
from unseg.core.picie.inference import ImageSource, iter_features
from unseg.core.picie.network import PiCIENet
from unseg.core.store import ShardStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """Final evaluation k-means (and the monitoring that mirrors it).

    Attributes:
        num_clusters: K_test (num_classes; more for over-clustering).
        num_iters / num_redo / sample_size: of the faiss k-means on train features.
        batch_size: images per forward pass when computing features.
        monitor: score every epoch's clustering on val (when val labels exist).
        untrained_baseline: before training, score the final-evaluation protocol on the untrained network.
    """

    num_clusters: int
    num_iters: int = 30
    num_redo: int = 1
    sample_size: int = 100_000
    batch_size: int = 64
    monitor: bool = True
    untrained_baseline: bool = True

    def kmeans(self, seed: int) -> KMeansConfig:
        return KMeansConfig(num_clusters=self.num_clusters, metric="cosine", num_iters=self.num_iters,
                            num_redo=self.num_redo, sample_size=self.sample_size, seed=seed)

    def __post_init__(self) -> None:
        self.kmeans(0)  # validates K, iterations
        if self.batch_size < 1 or self.sample_size < self.num_clusters:
            raise ValueError(f"picie eval: batch_size must be >= 1 and sample_size >= K={self.num_clusters}, got "
                             f"{self.batch_size}, {self.sample_size}")


class ValMonitor:
    """Scores clusterings of the network's val features against val labels.

    Args:
        val: prepared val store with `image` and `label`.
        num_classes: classes of the labels (others are ignored).
        input_size: network input side.
        config: see EvalConfig.
        device: where the network runs.
        num_workers: processes reading the val images ahead (unseg.core.loader).
    """

    def __init__(self, val: ShardStore, num_classes: int, input_size: int, config: EvalConfig,
                 device: torch.device, num_workers: int = 0) -> None:
        self.val = val
        self.source = ImageSource(val, input_size, num_workers)
        self.num_classes = num_classes
        self.config = config
        self.device = device
        self.crop = val.fields["image"].shape[0]

    def score(self, net: PiCIENet, centroids: np.ndarray) -> dict[str, float]:
        """{"acc", "miou"} (percent) of nearest-centroid (cosine) predictions upsampled to the crop.

        Hungarian matching when K >= num_classes, majority vote otherwise.
        """
        k = len(centroids)
        accumulator = ConfusionAccumulator(self.num_classes, k)
        cents = torch.from_numpy(np.asarray(centroids, dtype=np.float32)).to(self.device)
        for rows, feats in iter_features(net, self.source, self.device, self.config.batch_size):
            pred = predict_labels(feats, cents, "cosine", (self.crop, self.crop)).cpu().numpy()
            labels = np.stack([self.val.item(int(r), ["label"])["label"] for r in rows])
            accumulator.update(labels, pred)
        scores = scores_from_confusion(accumulator.hist, "hungarian" if k >= self.num_classes else "majority")
        return {"acc": float(scores.acc), "miou": float(scores.miou)}

    def fresh_kmeans(self, net: PiCIENet, train: ImageSource, seed: int) -> dict[str, float]:
        """The final-evaluation protocol with the network as it is: k-means on a uniform sample of train pixel
        features (about sample_size, spread evenly over the images), then `score`."""
        quota = max(1, math.ceil(self.config.sample_size / len(train)))
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 11]))
        sample = []
        for _, feats in iter_features(net, train, self.device, self.config.batch_size):
            per_image = feats.shape[2] * feats.shape[3]
            rows = [i * per_image + np.sort(rng.choice(per_image, size=min(quota, per_image), replace=False))
                    for i in range(len(feats))]
            sample.append(sample_pixels(feats, np.concatenate(rows)).cpu().numpy())
        centroids = fit_kmeans(np.concatenate(sample), self.config.kmeans(seed), use_gpu=self.device.type == "cuda")
        return self.score(net, centroids)
