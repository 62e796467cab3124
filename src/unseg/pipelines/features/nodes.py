"""Feature nodes: a frozen backbone over the prepared images of both splits, streamed into feature stores."""

from __future__ import annotations

from typing import Any

from unseg.core.backbones import create_backbone
from unseg.core.devices import resolve_device
from unseg.core.features import FeatureStream, weights_id
from unseg.core.loader import resolve_num_workers
from unseg.core.store import ShardStore, check_same_ingestion, check_split


def extract_features(train: ShardStore, val: ShardStore, features: dict[str, Any], device: str,
                     num_workers: int | str) -> tuple[FeatureStream, FeatureStream]:
    """Lazy feature streams of the train and val images (consumed shard by shard when saved; `loader.num_workers`
    processes read the images ahead).

    Raises:
        StoreError: the two stores are not the train and val split of one ingestion (e.g. the latest train store of
            a run that failed before saving its val store, beside the val store of an earlier run).
    """
    check_split("prm_train_images", train, "train")
    check_split("prm_val_images", val, "val")
    check_same_ingestion(prm_train_images=train, prm_val_images=val, what="extract_features' inputs")
    backbone = create_backbone(features["backbone"], features["weights"], features["pretrained"])
    identity = weights_id(features["weights"], features["pretrained"])
    target = resolve_device(device)
    workers = resolve_num_workers(num_workers, target)
    return tuple(FeatureStream(store, backbone, target, features["batch_size"], identity, workers)
                 for store in (train, val))  # type: ignore[return-value]
