"""Inference of PriMaPs-EM prototypes: val predictions (with or without DenseCRF) and monitoring scores.

Prototype logits of the features (cached features, or flip-averaged features computed online), upsampled bilinearly
to the evaluation crop, argmax; with the CRF, its marginals over the log-softmax of the upsampled logits, argmax.
Features come from the source's `stream`, images and labels through `unseg.core.loader` (read ahead by `num_workers`
processes; the predictions do not depend on it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from unseg.core.loader import iter_reads, shard_batches
from unseg.core.metrics import ConfusionAccumulator, scores_from_confusion
from unseg.core.primaps.crf import CRFConfig, dense_crf_batch
from unseg.core.primaps.em import upsampled_logits
from unseg.core.primaps.prototypes import Prototypes
from unseg.core.primaps.sources import FeatureSource
from unseg.core.store import FieldSpec, Shard, ShardStore, fingerprint

logger = logging.getLogger(__name__)


@torch.no_grad()
def predict_batch(model: Prototypes, features: torch.Tensor, size: tuple[int, int], images: np.ndarray | None = None,
                  crf: CRFConfig | None = None) -> np.ndarray:
    """Cluster ids of a batch.

    Args:
        model: the prototypes.
        features: (B, C, h, w).
        size: output (H, W).
        images: uint8 (B, H, W, 3), needed with a CRF.
        crf: None or disabled: argmax of the upsampled logits; else the CRF over their log-softmax.

    Returns:
        int64 (B, H, W) in [0, K).
    """
    logits = upsampled_logits(model, features, size)
    if crf is None or not crf.enabled:
        return logits.max(1).indices.cpu().numpy()  # max, not argmax: much faster on CPU
    if images is None:
        raise ValueError("predict_batch: the CRF needs the images")
    log_probs = logits.log_softmax(1).cpu().numpy()
    return np.stack([marginals.argmax(0) for marginals in dense_crf_batch(list(images), list(log_probs), crf)])


@dataclass
class PrototypePredictionStream:
    """Val predictions of a prototype model, one output shard per shard of the val image store.

    Args:
        state: the model, {"directions": (K, C), "gains": (K,)}.
        source: val features by position (same ids as `images`).
        images: the prepared val images (ids, shards, and the CRF's appearance kernel).
        crf: None: no CRF.
        tag: what else identifies the predictions (method, base, feature mode) for the fingerprint and attrs.
        num_workers: processes reading the CRF's images ahead (the source reads its features with its own).

    Field: pred uint8 (crop, crop) cluster ids. Attrs: num_clusters and `tag`.
    """

    state: dict[str, Any]
    source: FeatureSource
    images: ShardStore
    crf: CRFConfig | None
    device: torch.device
    tag: dict[str, Any]
    batch_size: int = 32
    num_workers: int = 0
    fields: dict[str, FieldSpec] = field(init=False)
    attrs: dict[str, Any] = field(init=False)
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        if self.source.ids != self.images.ids:
            raise ValueError(f"the val features and the val images {self.images.root} hold different images")
        num_clusters = len(self.state["directions"])
        if num_clusters > 255:
            raise ValueError(f"{num_clusters} prototypes do not fit the uint8 prediction store (at most 255)")
        self.model = Prototypes.from_state(self.state).to(self.device).eval()
        self.fields = {"pred": FieldSpec("uint8", tuple(self.images.fields["image"].shape[:2]))}
        crf = ({k: v for k, v in asdict(self.crf).items() if k != "workers"}  # results do not depend on it
               if self.crf is not None and self.crf.enabled else None)
        self.attrs = {"num_clusters": num_clusters, "crf": crf, **self.tag, "images": self.images.fingerprint}
        self.fingerprint = fingerprint(self.attrs, np.round(np.asarray(self.state["directions"]), 6).tolist(),
                                       np.round(np.asarray(self.state["gains"]), 6).tolist())

    @property
    def num_shards(self) -> int:
        return self.images.num_shards

    def iter_shards(self, todo: Sequence[int]) -> Iterator[Shard]:
        size = self.fields["pred"].shape
        batches = shard_batches(self.images, todo, self.batch_size)
        features = self.source.stream(batches)
        crf = self.crf is not None and self.crf.enabled
        images = iter_reads(self.images, ["image"], batches, self.num_workers) if crf else None
        for index in todo:
            preds = [np.zeros((0, *size), np.uint8)]
            for _ in range(-(-self.images.shard_counts[index] // self.batch_size)):
                rgb = next(images)["image"].numpy() if images is not None else None
                preds.append(predict_batch(self.model, next(features), size, rgb, self.crf).astype(np.uint8))
            yield Shard(index, self.images.shard_ids(index), {"pred": np.concatenate(preds)})


def val_scores(model: Prototypes, source: FeatureSource, labels: ShardStore, num_classes: int,
               batch_size: int = 32, num_workers: int = 0) -> dict[str, float]:
    """Acc and mIoU (percent, Hungarian; majority vote when K < classes) of a model's argmax on val.

    For monitoring only: nothing is selected on these numbers.
    """
    if source.ids != labels.ids:
        raise ValueError(f"the val features and the val labels {labels.root} hold different images")
    size = tuple(labels.fields["label"].shape)
    accumulator = ConfusionAccumulator(num_classes, model.num_prototypes)
    was_training = model.training
    model.eval()
    batches = [list(range(start, min(start + batch_size, len(labels)))) for start in range(0, len(labels), batch_size)]
    reads = iter_reads(labels, ["label"], batches, num_workers)
    for read, features in zip(reads, source.stream(batches), strict=True):
        accumulator.update(read["label"].numpy(), predict_batch(model, features, size))  # type: ignore[arg-type]
    model.train(was_training)
    scores = scores_from_confusion(accumulator.hist, "hungarian" if model.num_prototypes >= num_classes else "majority")
    return {"val_acc": float(scores.acc), "val_miou": float(scores.miou)}
