"""Ingestion nodes: index the data source, prepare both splits at the evaluation resolution, report."""

from __future__ import annotations

from typing import Any

import pandas as pd

from unseg.core.data.prepare import PreparedImageStream, decode_workers, ingestion_fingerprint
from unseg.core.data.sources import DatasetConfig, build_index
from unseg.core.store import ShardStore


def build_image_index(dataset: dict[str, Any], seed: int) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Index table (image_id, split, image_path, label_path, width, height) and the files skipped as bad."""
    result = build_index(DatasetConfig.from_params(dataset, seed))
    return result.table, result.skipped


def prepare_images(index: pd.DataFrame, dataset: dict[str, Any], seed: int, shard_size: int,
                   num_workers: int | str) -> tuple[PreparedImageStream, PreparedImageStream]:
    """Lazy streams of the train and val images (and labels) at the evaluation resolution, decoded by `num_workers`
    processes (an integer >= 0, or "auto")."""
    config = DatasetConfig.from_params(dataset, seed)
    ingestion = ingestion_fingerprint(index, config, shard_size)  # shared by both stores: they belong together
    workers = decode_workers(num_workers)
    return tuple(PreparedImageStream(index[index["split"] == role].reset_index(drop=True), config, shard_size,
                                     ingestion, workers) for role in ("train", "val"))  # type: ignore[return-value]


def report_ingestion(index: pd.DataFrame, index_skipped: list[dict[str, str]], train: ShardStore,
                     val: ShardStore) -> dict[str, dict[str, float]]:
    """Image and skipped-file counts per split, as MLflow metrics.

    Raises:
        ValueError: a split's store holds no image (every one skipped as bad); `PreparedImageStream` says so while
            writing, this catches a store finished by a resumed write.
    """
    for role, store in (("train", train), ("val", val)):
        if not len(store):
            raise ValueError(f"empty {role} split in {store.root}: all {len(store.skipped)} images were skipped as bad "
                             f"when decoded (dataset.on_bad_file=skip); fix or remove them and run again")
    skipped = pd.DataFrame(index_skipped + train.skipped + val.skipped, columns=["id", "path", "problem"])
    metrics = {"ingestion/skipped_files": len(skipped)}
    for role, store in (("train", train), ("val", val)):
        metrics[f"ingestion/{role}/images"] = len(store)
        metrics[f"ingestion/{role}/indexed"] = int((index["split"] == role).sum())
    return {name: {"value": float(value), "step": 0} for name, value in metrics.items()}
