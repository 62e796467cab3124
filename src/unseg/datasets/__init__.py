"""Kedro datasets the project needs and kedro-datasets does not have."""

from unseg.datasets.shard_store_dataset import ShardStoreDataset

__all__ = ["ShardStoreDataset"]
