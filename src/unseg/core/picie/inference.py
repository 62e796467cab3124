"""Reading prepared images for PiCIE and computing its dense features on un-augmented images.

Evaluation per the paper: the prepared (centre-cropped) image resized to the network input, features at stride 4;
train features feed the final k-means, val features are assigned and upsampled to the crop (unseg.core.evaluate).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from unseg.core.features import images_to_tensor
from unseg.core.loader import iter_reads, shard_batches
from unseg.core.picie.network import PiCIENet
from unseg.core.picie.views import resize
from unseg.core.store import FieldSpec, Shard, ShardStore, fingerprint

logger = logging.getLogger(__name__)


class ImageSource:
    """Random access to the uint8 images of a prepared store as float batches; reads nothing but `image`.

    Args:
        store: a prepared store (field image uint8 (S, S, 3)).
        size: side the images are resized to (antialiased bilinear); None keeps S.
        num_workers: processes that read the next batches ahead in `batches` (unseg.core.loader; 0: none).

    Raises:
        ValueError: the store has no square `image` field.
    """

    def __init__(self, store: ShardStore, size: int | None = None, num_workers: int = 0) -> None:
        spec = store.fields.get("image")
        if spec is None or len(spec.shape) != 3 or spec.shape[0] != spec.shape[1] or spec.shape[2] != 3:
            raise ValueError(f"{store.root}: PiCIE needs square RGB images (field image (S, S, 3)), "
                             f"got {None if spec is None else spec.shape}")
        self.store = store
        self.side = spec.shape[0]
        self.size = size or self.side
        self.num_workers = num_workers
        self._shards: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.store)

    def uint8(self, indices: Sequence[int]) -> np.ndarray:
        """(B, S, S, 3) uint8 images at positions `indices` (through the shards' memory maps)."""
        out = np.empty((len(indices), self.side, self.side, 3), dtype=np.uint8)
        for row, position in enumerate(indices):
            shard, offset = self.store.locate(int(position))
            if shard not in self._shards:
                self._shards[shard] = self.store.shard(shard, ["image"])["image"]
            out[row] = self._shards[shard][offset]
        return out

    def batch(self, indices: Sequence[int], device: torch.device) -> torch.Tensor:
        """(B, 3, size, size) float RGB in [0, 1] on `device`."""
        return resize(images_to_tensor(self.uint8(indices), device), self.size)

    def batches(self, batches: Sequence[Sequence[int]], device: torch.device) -> Iterator[torch.Tensor]:
        """`batch` of each list of positions, in the order given, read ahead by `num_workers` processes."""
        for read in iter_reads(self.store, ["image"], batches, self.num_workers, pin_memory=device.type == "cuda"):
            yield resize(images_to_tensor(read["image"], device), self.size)


@torch.no_grad()
def iter_features(net: PiCIENet, source: ImageSource, device: torch.device, batch_size: int,
                  indices: Sequence[int] | None = None,
                  batches: Sequence[Sequence[int]] | None = None) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(positions (B,), features (B, D, size / 4, size / 4)) of un-augmented images, network in eval mode.

    The batches: `batches` when given, else `indices` (default: every image in order) cut into `batch_size`.
    """
    net.eval()
    if batches is None:
        order = np.arange(len(source)) if indices is None else np.asarray(indices)
        batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    for rows, images in zip(batches, source.batches(batches, device), strict=True):
        yield np.asarray(rows), net(images)


@dataclass
class PiCIEFeatureStream:
    """PiCIE features of every image of a prepared store, one output shard per input shard (an ArrayStream).

    Field: feat float16 (D, input_size / 4, input_size / 4), raw FPN outputs (not L2-normalised: cosine users
    normalise, PriMaPs-EM scores raw features). `num_workers` processes read the images ahead (the features do not
    depend on it).
    """

    images: ShardStore
    network: PiCIENet
    device: torch.device
    batch_size: int
    input_size: int
    weights_id: str
    num_workers: int = 0
    fields: dict[str, FieldSpec] = field(init=False)
    attrs: dict[str, Any] = field(init=False)
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        self.source = ImageSource(self.images, self.input_size, self.num_workers)
        grid = self.input_size // self.network.stride
        self.fields = {"feat": FieldSpec("float16", (self.network.dim, grid, grid))}
        self.attrs = {"backbone": f"picie_{self.network.arch}", "stride": self.network.stride,
                      "dim": self.network.dim, "input_size": self.input_size, "normalised": False,
                      "weights": self.weights_id, "images": self.images.fingerprint,
                      "split": self.images.attrs.get("split")}
        self.fingerprint = fingerprint(self.attrs)
        self.network.to(self.device)

    @property
    def num_shards(self) -> int:
        return self.images.num_shards

    def iter_shards(self, todo: Sequence[int]) -> Iterator[Shard]:
        batches = shard_batches(self.images, todo, self.batch_size)
        features = iter_features(self.network, self.source, self.device, self.batch_size, batches=batches)
        for index in todo:
            feats = [next(features)[1].float().cpu().numpy().astype(np.float16)
                     for _ in range(-(-self.images.shard_counts[index] // self.batch_size))]
            array = np.concatenate(feats) if feats else np.zeros((0, *self.fields["feat"].shape), np.float16)
            yield Shard(index, self.images.shard_ids(index), {"feat": array})


def state_fingerprint(net: torch.nn.Module) -> str:
    """A short hash of a network's weights (identifies trained features in store fingerprints)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
