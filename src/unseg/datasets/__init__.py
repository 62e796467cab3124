"""Kedro datasets the project needs and kedro-datasets does not have."""

from unseg.datasets.mlflow_pooled_model_dataset import MlflowPooledModelDataset
from unseg.datasets.mlflow_runs_dataset import MlflowRunsDataset
from unseg.datasets.online_store_dataset import OnlineStoreDataset
from unseg.datasets.pooled_torch_dataset import PooledTorchDataset
from unseg.datasets.shard_store_dataset import ShardStoreDataset
from unseg.datasets.trained_model_dataset import TrainedModelDataset

__all__ = [
    "MlflowPooledModelDataset",
    "MlflowRunsDataset",
    "OnlineStoreDataset",
    "PooledTorchDataset",
    "ShardStoreDataset",
    "TrainedModelDataset",
]
