"""PriMaPs label maps of a whole split: proposals -> post-processing -> (DenseCRF) -> one uint8 map per image.

The maps are computed once over the train split from the frozen backbone's feature store and stored (field `mask`,
(crop, crop) uint8: mask ids 0, 1, ... and 255 = ignore), one output shard per feature shard. The EM stage reads them
whatever features its prototypes score (frozen backbone or PiCIE), since the maps live at the image resolution.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from unseg.core.loader import iter_reads, shard_batches, to_device
from unseg.core.primaps.crf import CRFConfig, dense_crf_batch
from unseg.core.primaps.postprocess import labels_from_scores, masks_to_logits, upsample
from unseg.core.primaps.proposals import ProposalConfig, Proposals, propose_masks
from unseg.core.store import FieldSpec, Shard, ShardStore, fingerprint

logger = logging.getLogger(__name__)


def proposal_label_maps(features: torch.Tensor, images: np.ndarray, proposals: ProposalConfig,
                        crf: CRFConfig) -> tuple[np.ndarray, Proposals]:
    """PriMaPs label maps of a batch.

    Args:
        features: (B, C, h, w) frozen backbone features (on the device the loop should run on).
        images: uint8 (B, H, W, 3), the images the features come from (CRF appearance kernel, output size).
        proposals: the loop's settings.
        crf: the CRF's settings (enabled=False: argmax of the upsampled logits).

    Returns:
        uint8 (B, H, W) label maps (mask ids, 255 = ignore) and the raw proposals.
    """
    size = images.shape[1:3]
    result = propose_masks(features, proposals)
    slots = max(int(result.counts.max()), 1) if len(result.counts) else 1  # padding slots beyond every count: unused
    logits = upsample(masks_to_logits(result.masks[:, :slots], result.counts), size).cpu()
    if not crf.enabled:
        return labels_from_scores(logits).numpy(), result
    maps = np.full((len(images), *size), 255, dtype=np.uint8)
    todo = [b for b, count in enumerate(result.counts.tolist()) if count > 0]  # none: nothing but background, ignore
    marginals = dense_crf_batch([images[b] for b in todo],
                                [logits[b, :int(result.counts[b]) + 1].numpy() for b in todo], crf)
    for b, marginal in zip(todo, marginals, strict=True):
        maps[b] = labels_from_scores(torch.from_numpy(marginal)[None])[0].numpy()
    return maps, result


@dataclass
class ProposalStream:
    """Label maps of every image of a split, one output shard per input shard of the feature store.

    Args:
        features: the frozen backbone's feature store of the split (field `feat`).
        images: the prepared images of the same split (field `image`), same ids and shards.
        proposals / crf: settings.
        device: where the proposal loop runs (the CRF runs on the CPU).
        num_workers: processes reading the features and images ahead (unseg.core.loader; the maps do not depend on it).

    Field: mask uint8 (crop, crop). Attrs: the settings, the backbone, and the upstream fingerprints.
    """

    features: ShardStore
    images: ShardStore
    proposals: ProposalConfig
    crf: CRFConfig
    device: torch.device
    num_workers: int = 0
    fields: dict[str, FieldSpec] = field(init=False)
    attrs: dict[str, Any] = field(init=False)
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        if self.features.ids != self.images.ids or self.features.shard_counts != self.images.shard_counts:
            raise ValueError(f"features {self.features.root} and images {self.images.root} do not hold the same "
                             "images in the same shards")
        height, width = self.images.fields["image"].shape[:2]
        self.fields = {"mask": FieldSpec("uint8", (height, width))}
        self.attrs = {"proposals": asdict(self.proposals), "crf": asdict(self.crf),
                      "backbone": self.features.attrs.get("backbone"), "features": self.features.fingerprint,
                      "images": self.images.fingerprint, "split": self.images.attrs.get("split")}
        # results depend on neither the batch size nor the CRF's worker count
        batching = {k: v for k, v in self.attrs["proposals"].items() if k != "batch_size"}
        crf = {k: v for k, v in self.attrs["crf"].items() if k != "workers"}
        self.fingerprint = fingerprint({**self.attrs, "proposals": batching, "crf": crf})

    @property
    def num_shards(self) -> int:
        return self.features.num_shards

    def iter_shards(self, todo: Sequence[int]) -> Iterator[Shard]:
        step = self.proposals.batch_size
        batches = shard_batches(self.features, todo, step)
        cuda = self.device.type == "cuda"
        feats = iter_reads(self.features, ["feat"], batches, self.num_workers, pin_memory=cuda)
        images = iter_reads(self.images, ["image"], batches, self.num_workers)
        for index in todo:
            ids = self.features.shard_ids(index)
            maps = []
            for start in range(0, len(ids), step):
                x = to_device(next(feats)["feat"], self.device).float()
                batch_maps, result = proposal_label_maps(x, next(images)["image"].numpy(), self.proposals, self.crf)
                maps.append(batch_maps)
                empty = [ids[start + b] for b in torch.nonzero(result.counts == 0).flatten().tolist()]
                if empty:
                    logger.warning("PriMaPs: no mask proposal for %d image(s) (all ignore, skipped by the EM): %s",
                                   len(empty), ", ".join(empty[:10]))
            arrays = np.concatenate(maps) if maps else np.zeros((0, *self.fields["mask"].shape), np.uint8)
            yield Shard(index, ids, {"mask": arrays})


def proposal_stats(masks: ShardStore) -> dict[str, float]:
    """Counts over a stored split of label maps.

    Returns:
        masks_per_image: mean number of distinct mask ids per image (after post-processing and CRF);
        empty_images: images whose map is all ignore; coverage: fraction of pixels not ignored.
    """
    per_image, empty, covered, total = [], 0, 0, 0
    for shard in masks.iter_shards(["mask"]):
        maps = np.asarray(shard["mask"])
        for label_map in maps:
            present = np.unique(label_map)
            count = int((present != 255).sum())
            per_image.append(count)
            empty += count == 0
        covered += int((maps != 255).sum())
        total += maps.size
    return {"masks_per_image": float(np.mean(per_image)) if per_image else 0.0, "empty_images": float(empty),
            "coverage": covered / max(total, 1)}
