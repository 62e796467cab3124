"""Evaluation on the val split: centroid predictions, Hungarian-matched scores, the comparison table.

Every method ends as a store of cluster ids at the evaluation resolution (field `pred`, (crop, crop)); scoring one
is the same for all (see `unseg.core.metrics` for the protocol).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from unseg.core.features import images_to_tensor
from unseg.core.kmeans import predict_labels
from unseg.core.loader import iter_reads, shard_batches, to_device
from unseg.core.metrics import ConfusionAccumulator, remap_confusion, scores_from_confusion, subset_miou
from unseg.core.store import FieldSpec, Shard, ShardStore, fingerprint

logger = logging.getLogger(__name__)


@dataclass
class CentroidPredictionStream:
    """Nearest-centroid cluster ids for every item of a store, upsampled to `size` (bilinear scores, argmax).

    Args:
        source: the store whose `field` is scored: dense features (C, h, w), or uint8 images (H, W, 3) when
            `images` is True (RGB in [0, 1], the rgb_kmeans floor).
        centroids: float32 (K, D).
        metric: "cosine", "euclidean" or "linear" (see unseg.core.kmeans.centroid_scores).
        size: output (H, W), the evaluation crop.
        bias: float32 (K,) for the "linear" metric (the supervised probe).
        num_workers: processes reading the next batches ahead (unseg.core.loader; the predictions do not depend on it).
    """

    source: ShardStore
    source_field: str
    images: bool
    centroids: np.ndarray
    metric: str
    size: tuple[int, int]
    device: torch.device
    batch_size: int = 32
    bias: np.ndarray | None = None
    num_workers: int = 0
    fields: dict[str, FieldSpec] = field(init=False)
    attrs: dict[str, Any] = field(init=False)
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        dtype = "uint8" if len(self.centroids) <= 256 else "int32"
        self.fields = {"pred": FieldSpec(dtype, tuple(self.size))}
        self.attrs = {"num_clusters": len(self.centroids), "metric": self.metric, "source": self.source.fingerprint}
        bias = None if self.bias is None else self.bias.round(6).tolist()
        self.fingerprint = fingerprint(self.attrs, self.centroids.round(6).tolist(), bias, self.size)

    @property
    def num_shards(self) -> int:
        return self.source.num_shards

    @torch.inference_mode()
    def iter_shards(self, todo: Sequence[int]) -> Iterator[Shard]:
        centroids = torch.from_numpy(self.centroids).to(self.device)
        bias = None if self.bias is None else torch.from_numpy(self.bias).to(self.device)
        batches = shard_batches(self.source, todo, self.batch_size)
        reads = iter_reads(self.source, [self.source_field], batches, self.num_workers,
                           pin_memory=self.device.type == "cuda")
        for index in todo:
            preds = []
            for _ in range(-(-self.source.shard_counts[index] // self.batch_size)):
                batch = next(reads)[self.source_field]
                x = images_to_tensor(batch, self.device) if self.images else to_device(batch, self.device).float()
                preds.append(predict_labels(x, centroids, self.metric, self.size, bias).cpu().numpy())
            pred = np.concatenate(preds) if preds else np.zeros((0, *self.size))
            yield Shard(index, self.source.shard_ids(index), {"pred": pred.astype(self.fields["pred"].dtype)})


def confusion_of(predictions: ShardStore, labels: ShardStore, num_classes: int, num_clusters: int) -> np.ndarray:
    """hist[gt, pred] (num_classes, num_clusters) over every val image, matched by image id.

    Raises:
        ValueError: the stores do not hold the same images, or the sizes differ.
    """
    if predictions.ids != labels.ids:
        missing = sorted(set(labels.ids) - set(predictions.ids))[:5]
        raise ValueError(f"predictions {predictions.root} and labels {labels.root} hold different images "
                         f"(e.g. without prediction: {missing})")
    accumulator = ConfusionAccumulator(num_classes, num_clusters)
    for index in range(labels.num_shards):
        gt = labels.shard(index, ["label"])["label"]
        pred = predictions.shard(index, ["pred"])["pred"]
        accumulator.update(np.asarray(gt), np.asarray(pred))
    return accumulator.hist


def method_scores(method: str, hist: np.ndarray, class_names: Sequence[str],
                  things: Sequence[int] = (), stuff: Sequence[int] = ()) -> dict[str, Any]:
    """A JSON-able record of one method's val scores (Hungarian; plus majority when over-clustering)."""
    scores = scores_from_confusion(hist, "hungarian")
    record: dict[str, Any] = {
        "method": method,
        "num_clusters": int(hist.shape[1]),
        "acc": scores.acc,
        "miou": scores.miou,
        "iou": [None if np.isnan(v) else float(v) for v in scores.iou],
        "class_names": list(class_names),
        "mapping": scores.mapping.tolist(),
        "confusion": hist.tolist(),
    }
    if things and stuff:
        record["miou_things"] = subset_miou(scores.iou, things)
        record["miou_stuff"] = subset_miou(scores.iou, stuff)
    if hist.shape[1] > hist.shape[0]:
        majority = scores_from_confusion(hist, "majority")
        record["majority_acc"], record["majority_miou"] = majority.acc, majority.miou
    return record


def matched_confusion(record: Mapping[str, Any]) -> np.ndarray:
    """The (K, K) class-vs-class confusion of a method record under its Hungarian mapping."""
    return remap_confusion(np.asarray(record["confusion"]), np.asarray(record["mapping"]))


def comparison_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per method: Acc and mIoU (percent) and whatever subset / majority scores the records hold."""
    columns = ["method", "num_clusters", "acc", "miou", "miou_things", "miou_stuff", "majority_acc", "majority_miou"]
    rows = [{c: r.get(c) for c in columns} for r in records]
    table = pd.DataFrame(rows, columns=columns).dropna(axis=1, how="all")
    return table.round(2)


def metrics_of(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Flat MLflow metrics: eval/<method>/acc, eval/<method>/miou, eval/<method>/iou/<class>, ..."""
    metrics: dict[str, float] = {}
    for record in records:
        prefix = f"eval/{record['method']}"
        for key in ("acc", "miou", "miou_things", "miou_stuff", "majority_acc", "majority_miou"):
            if record.get(key) is not None and not np.isnan(record[key]):
                metrics[f"{prefix}/{key}"] = float(record[key])
        for name, value in zip(record["class_names"], record["iou"], strict=True):
            if value is not None:
                metrics[f"{prefix}/iou/{name}"] = float(value)
    return metrics


def mapped_predictions(predictions: ShardStore, record: Mapping[str, Any], count: int,
                       ignore_index: int) -> np.ndarray:
    """The first `count` predictions mapped to class ids (unmatched clusters -> ignore_index), (count, H, W)."""
    lut = np.asarray(record["mapping"], dtype=np.int64)
    lut = np.where(lut < 0, ignore_index, lut)
    preds = np.stack([predictions.item(i, ["pred"])["pred"] for i in range(min(count, len(predictions)))])
    return lut[preds.astype(np.int64)]
