"""Kedro dataset for features computed where they are read: saving keeps the stream, loading gives an `OnlineStore`.

Nothing is written: a node's feature stream (`FeatureStream`, `PiCIEFeatureStream`) is kept in memory, and each
consumer loads a fresh `unseg.core.online.OnlineStore` over it, which reads like the stored copy (ids, shards,
attrs and lineage, fingerprint) and computes each shard when it is read (docs/storage.md, "Features computed where
they are read"). The producing node must therefore run in the same `kedro run` as the consumers.
"""

from __future__ import annotations

from typing import Any

from kedro.io import AbstractDataset, DatasetError

from unseg.core.online import CACHE_SHARDS, OnlineSource, OnlineStore


class OnlineStoreDataset(AbstractDataset[OnlineSource, OnlineStore]):
    """An online store in place of a `ShardStoreDataset` (same producers, same consumers, no disk).

    Args:
        description: names the data in messages and in the store's `root` (e.g. the catalog entry's name).
        cache_shards: computed shards each loaded store keeps in memory.

    Example catalog entry (conf/cocostuff27/catalog.yml)::

        feat_train:
          type: unseg.datasets.OnlineStoreDataset
          description: feat_train
    """

    def __init__(self, description: str | None = None, cache_shards: int = CACHE_SHARDS,
                 metadata: dict[str, Any] | None = None) -> None:
        self._description = description
        self._cache_shards = cache_shards
        self._stream: OnlineSource | None = None
        self.metadata = metadata

    def load(self) -> OnlineStore:
        if self._stream is None:
            raise DatasetError(f"online store {self._description or ''} loaded before it was saved: it holds no data, "
                               "its features are computed from the stream of the node that makes them, which must run "
                               "in the same `kedro run` (e.g. add the features pipeline: `--pipelines features,...`), "
                               "or store them with a ShardStoreDataset (conf/base)")
        return OnlineStore(self._stream, self._description, self._cache_shards)

    def save(self, data: OnlineSource) -> None:
        OnlineStore(data, self._description, self._cache_shards)  # fails now, at the producing node, if it cannot read
        self._stream = data

    def _exists(self) -> bool:
        return self._stream is not None

    def _release(self) -> None:
        self._stream = None  # the backbone goes with the last consumer

    def _describe(self) -> dict[str, Any]:
        return {"description": self._description, "cache_shards": self._cache_shards,
                "saved": self._stream is not None}
