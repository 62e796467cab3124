"""Supervised linear probe: the upper bound of what the frozen features hold (evaluation only).

A 1x1 convolution with bias on the detached features, trained with cross-entropy on the train split's ground truth
(scores upsampled bilinearly to the label resolution, ignore_index ignored), as in STEGO / PriMaPs [0]. It never feeds
an unsupervised method.

[0] https://arxiv.org/abs/2404.16818
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unseg.core.store import ShardStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinearProbeConfig:
    """epochs over the train split, Adam learning rate, images per step, seed of the init and the order."""

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"linear probe needs epochs >= 1, batch_size >= 1, lr > 0; got {self}")


def _batches(features: ShardStore, labels: ShardStore, batch_size: int,
             rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Shuffled (features, labels) batches, streamed: shards in random order, items shuffled within a shard, one
    shard in memory at a time (memory flat in the number of images)."""
    for index in rng.permutation(features.num_shards):
        feats = np.asarray(features.shard(int(index), ["feat"])["feat"])
        gts = np.asarray(labels.shard(int(index), ["label"])["label"])
        order = rng.permutation(len(feats))
        for start in range(0, len(order), batch_size):
            yield feats[order[start:start + batch_size]], gts[order[start:start + batch_size]]


def fit_linear_probe(features: ShardStore, labels: ShardStore, num_classes: int, config: LinearProbeConfig,
                     device: torch.device) -> nn.Conv2d:
    """Trains the probe on train features (C, h, w) against train labels (H, W); labels outside [0, K) are ignored.

    Raises:
        ValueError: the stores hold different images, or the labels are missing.
    """
    if "label" not in labels.fields:
        raise ValueError(f"{labels.root}: the linear probe needs train labels, and this store has none")
    if features.ids != labels.ids:
        raise ValueError(f"{features.root} and {labels.root} hold different images")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    probe = nn.Conv2d(features.fields["feat"].shape[0], num_classes, kernel_size=1).to(device)
    optimiser = torch.optim.Adam(probe.parameters(), lr=config.lr)
    for epoch in range(config.epochs):
        total, steps = 0.0, 0
        for feats, gts in _batches(features, labels, config.batch_size, rng):
            x = torch.from_numpy(feats).to(device).float()
            y = torch.from_numpy(gts.astype(np.int64)).to(device)
            y = torch.where((y >= 0) & (y < num_classes), y, torch.full_like(y, -100))
            logits = F.interpolate(probe(x), size=y.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, y, ignore_index=-100)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total, steps = total + loss.item(), steps + 1
        logger.info("linear probe epoch %d/%d: loss %.4f", epoch + 1, config.epochs, total / max(steps, 1))
    return probe.eval().requires_grad_(False)
