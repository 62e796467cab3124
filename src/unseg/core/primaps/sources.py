"""Where PriMaPs-EM gets its features and masks from, by item position: a store (cached) or a backbone (online).

- `StoreFeatures`: a feature store (frozen backbone or PiCIE), read through cached per-shard memory maps.
- `BackboneFeatures`: the frozen backbone run on the prepared images, optionally on photometrically augmented copies
  (the student's input when `primaps.augment` is true) or averaged over the image and its horizontal flip
  (inference, as in the paper).
A source gives the features of one batch (`source(positions)`) or of a list of batches (`source.stream(batches)`),
whose reads `num_workers` processes of `unseg.core.loader` do ahead; both give the same tensors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from unseg.core.backbones import Backbone
from unseg.core.features import images_to_tensor
from unseg.core.loader import iter_reads, shard_batches, to_device
from unseg.core.primaps.augment import augment_batch
from unseg.core.store import ShardStore


class FeatureSource(Protocol):
    """Features (B, C, h, w) float32 on the source's device for items given by position."""

    ids: list[str]

    def __call__(self, positions: Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor: ...

    def stream(self, batches: Sequence[Sequence[int]],
               generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
        """`self(batch, generator)` of each batch, in order (random draws in the same order as those calls)."""
        ...


@dataclass
class ItemReader:
    """Items of one field of a store by position, through memory maps opened once per shard."""

    store: ShardStore
    name: str
    _maps: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def __call__(self, positions: Sequence[int]) -> np.ndarray:
        """(len(positions), *shape) copied out of the store."""
        if getattr(self.store, "online", False):  # computed where read: only these items, memory bounded by the store
            return self.store.rows(positions, [self.name])[self.name]  # type: ignore[attr-defined]
        rows = []
        for position in positions:
            shard, offset = self.store.locate(int(position))
            if shard not in self._maps:
                self._maps[shard] = self.store.shard(shard, [self.name])[self.name]
            rows.append(np.asarray(self._maps[shard][offset]))
        spec = self.store.fields[self.name]
        return np.stack(rows) if rows else np.zeros((0, *spec.shape), spec.dtype)


class StoreFeatures:
    """Cached features of a store's `feat` field.

    A store whose features take at most `memory_limit` bytes as float32 is read into memory once (on the device);
    a larger one is read item by item through memory maps at every call.

    Args:
        store: a feature store (C, h, w) per item.
        device: where the tensors go.
        memory_limit: bytes.
        num_workers: processes reading ahead (the whole store once, or the batches of `stream`).
    """

    def __init__(self, store: ShardStore, device: torch.device, memory_limit: int = 2**31,
                 num_workers: int = 0) -> None:
        self.ids = store.ids
        self.store = store
        self.reader = ItemReader(store, "feat")
        self.device = device
        self.num_workers = num_workers
        self.dim = int(store.fields["feat"].shape[0])
        self._all: torch.Tensor | None = None
        if 4 * len(store) * int(np.prod(store.fields["feat"].shape)) <= memory_limit:
            reads = iter_reads(store, ["feat"], shard_batches(store, range(store.num_shards)), num_workers)
            shards = [read["feat"].float() for read in reads]
            self._all = torch.cat(shards).to(device) if shards else None

    def __call__(self, positions: Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
        if self._all is not None:
            return self._all[torch.as_tensor(list(positions), dtype=torch.long, device=self.device)]
        return torch.from_numpy(self.reader(positions).astype(np.float32)).to(self.device)

    def stream(self, batches: Sequence[Sequence[int]],
               generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
        if self._all is not None:
            yield from (self(batch) for batch in batches)
            return
        for read in iter_reads(self.store, ["feat"], batches, self.num_workers, self.device.type == "cuda"):
            yield to_device(read["feat"], self.device).float()


class BackboneFeatures:
    """Features computed online by a frozen backbone from a prepared-image store.

    Args:
        images: prepared images (field `image`, uint8 (H, W, 3)).
        backbone: frozen, already on `device`.
        device: where it runs (bf16 autocast and channels-last on CUDA, as in feature extraction).
        augment: photometric augmentation of every image (needs a generator per call).
        flip_average: average the features of the image and of its horizontal flip (flipped back).
        num_workers: processes reading the images of `stream` ahead.
    """

    def __init__(self, images: ShardStore, backbone: Backbone, device: torch.device, augment: bool = False,
                 flip_average: bool = False, num_workers: int = 0) -> None:
        self.ids = images.ids
        self.images = images
        self.num_workers = num_workers
        self.reader = ItemReader(images, "image")
        self.backbone = backbone
        self.device = device
        self.augment = augment
        self.flip_average = flip_average
        self.dim = backbone.cfg.dim

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        cuda = self.device.type == "cuda"
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cuda):
            return self.backbone(x).float()

    def __call__(self, positions: Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
        return self._features(images_to_tensor(self.reader(positions), self.device), generator)

    def stream(self, batches: Sequence[Sequence[int]],
               generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
        for read in iter_reads(self.images, ["image"], batches, self.num_workers, self.device.type == "cuda"):
            yield self._features(images_to_tensor(read["image"], self.device), generator)

    @torch.no_grad()
    def _features(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Features of images (B, 3, H, W) in [0, 1] on the device: augmented, flip-averaged as configured."""
        if self.augment:
            if generator is None:
                raise ValueError("BackboneFeatures(augment=True) needs a generator for the augmentation draws")
            x = augment_batch(x, generator)
        features = self._forward(x)
        if self.flip_average:
            features = (features + self._forward(x.flip(-1)).flip(-1)) / 2
        return features

