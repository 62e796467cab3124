"""Dense feature extraction with a frozen backbone, streamed shard by shard into a feature store.

Each shard of a prepared-image store becomes a shard of features (C, h, w) in float16. Batches run under
`torch.inference_mode`, with autocast (bf16) and channels-last on CUDA. The shards are read ahead by
`unseg.core.loader` worker processes (`num_workers`; 0: read in this process).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unseg.core.backbones import Backbone
from unseg.core.loader import iter_reads, shard_batches, to_device
from unseg.core.store import FieldSpec, Shard, ShardStore, fingerprint

logger = logging.getLogger(__name__)


def weights_id(weights: str | Path | None, pretrained: bool) -> str:
    """What identifies a backbone's weights in a store's fingerprint: a file by path, size and mtime (a replaced
    file at the same path never resumes onto shards of the old one), else "default" or "random"."""
    if weights:
        stat = Path(weights).expanduser().stat()
        return f"{weights}:{stat.st_size}:{stat.st_mtime_ns}"
    return "default" if pretrained else "random"


def images_to_tensor(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1] on `device` (a tensor from `unseg.core.loader`, pinned on
    CUDA, is copied without blocking)."""
    if isinstance(images, torch.Tensor):
        tensor = to_device(images, device)
    else:
        tensor = torch.from_numpy(np.array(images, dtype=np.uint8)).to(device, non_blocking=True)  # a writable copy
    return tensor.permute(0, 3, 1, 2).float().div_(255.0)


@torch.inference_mode()
def extract(backbone: Backbone, images: np.ndarray | torch.Tensor, device: torch.device,
            batch_size: int) -> np.ndarray:
    """Dense features of a stack of images.

    Args:
        backbone: a frozen Backbone already on `device`.
        images: uint8 (N, H, W, 3), an array or a CPU tensor.
        device: where the backbone runs.
        batch_size: images per forward pass.

    Returns:
        float16 (N, C, H / stride, W / stride).
    """
    cuda = device.type == "cuda"
    outs = []
    for start in range(0, len(images), batch_size):
        x = images_to_tensor(images[start:start + batch_size], device)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            outs.append(backbone(x).float().cpu().numpy().astype(np.float16))
    if outs:
        return np.concatenate(outs)
    # no images (e.g. a shard whose images were all skipped as bad): still the declared per-item shape
    height, width = images.shape[1:3]
    return np.zeros((0, backbone.cfg.dim, height // backbone.cfg.stride, width // backbone.cfg.stride), np.float16)


@dataclass
class FeatureStream:
    """Features of every image of a prepared store, one output shard per input shard.

    Field: feat float16 (C, crop / stride, crop / stride). `num_workers` processes read the next shards ahead (the
    features do not depend on it).
    """

    images: ShardStore
    backbone: Backbone
    device: torch.device
    batch_size: int
    weights_id: str
    num_workers: int = 0
    fields: dict[str, FieldSpec] = field(init=False)
    attrs: dict[str, Any] = field(init=False)
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.backbone.cfg
        height, width = self.images.fields["image"].shape[:2]
        if height % cfg.input_multiple or width % cfg.input_multiple:
            logger.warning("backbone %s: the prepared crop %dx%d is not a multiple of %d; images are resized down to "
                           "the nearest multiple (set dataset.crop to a multiple to avoid it)", cfg.name, height,
                           width, cfg.input_multiple)
        grid = cfg.grid(height, width)
        self.fields = {"feat": FieldSpec("float16", (cfg.dim, *grid))}
        self.attrs = {"backbone": cfg.name, "stride": cfg.stride, "dim": cfg.dim, "weights": self.weights_id,
                      "images": self.images.fingerprint, "split": self.images.attrs.get("split")}
        self.fingerprint = fingerprint(self.attrs)
        self.backbone.to(self.device)

    @property
    def num_shards(self) -> int:
        return self.images.num_shards

    def iter_shards(self, todo: Sequence[int]) -> Iterator[Shard]:
        reads = iter_reads(self.images, ["image"], shard_batches(self.images, todo), self.num_workers,
                           pin_memory=self.device.type == "cuda")
        for index, read in zip(todo, reads, strict=True):
            images = read["image"]
            start = time.perf_counter()
            feats = extract(self.backbone, images, self.device, self.batch_size)
            elapsed = time.perf_counter() - start
            logger.debug("shard %d: %d images in %.2fs (%.1f img/s)", index, len(images), elapsed,
                         len(images) / max(elapsed, 1e-9))
            yield Shard(index, self.images.shard_ids(index), {"feat": feats})
