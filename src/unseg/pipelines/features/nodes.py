"""Feature nodes: a frozen backbone over the prepared images of both splits, streamed into feature stores."""

from __future__ import annotations

from typing import Any

from unseg.core.backbones import create_backbone
from unseg.core.devices import resolve_device
from unseg.core.features import FeatureStream, weights_id
from unseg.core.store import ShardStore


def extract_features(train: ShardStore, val: ShardStore, features: dict[str, Any],
                     device: str) -> tuple[FeatureStream, FeatureStream]:
    """Lazy feature streams of the train and val images (consumed shard by shard when saved)."""
    backbone = create_backbone(features["backbone"], features["weights"], features["pretrained"])
    identity = weights_id(features["weights"], features["pretrained"])
    target = resolve_device(device)
    return tuple(FeatureStream(store, backbone, target, features["batch_size"], identity)
                 for store in (train, val))  # type: ignore[return-value]
