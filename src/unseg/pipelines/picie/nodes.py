"""PiCIE nodes: train the network (checkpointed), its features of both splits, the final k-means, val predictions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from unseg.core.devices import resolve_device
from unseg.core.evaluate import CentroidPredictionStream
from unseg.core.kmeans import fit_kmeans
from unseg.core.loader import resolve_num_workers
from unseg.core.picie import (
    ClusterConfig,
    EvalConfig,
    LossConfig,
    NetworkConfig,
    PiCIEFeatureStream,
    PiCIENet,
    TrainConfig,
    ViewConfig,
    state_fingerprint,
    train_picie,
)
from unseg.core.store import INGESTION, ShardStore, check_model_ingestion, check_same_ingestion, check_split
from unseg.core.visualise import plot_training_curves


def _with_k(params: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
    values = dict(params)
    values["num_clusters"] = values.get("num_clusters") or num_classes  # null: one cluster per class
    return values


def _check_images(train_images: ShardStore, val_images: ShardStore, what: str) -> None:
    check_split("prm_train_images", train_images, "train")
    check_split("prm_val_images", val_images, "val")
    check_same_ingestion(prm_train_images=train_images, prm_val_images=val_images, what=what)


def train(train_images: ShardStore, val_images: ShardStore, network: dict[str, Any], views: dict[str, Any],
          clustering: dict[str, Any], loss: dict[str, Any], training: dict[str, Any], evaluation: dict[str, Any],
          dataset: dict[str, Any], seed: int, device: str,
          num_workers: int | str) -> tuple[PiCIENet, PiCIENet, dict[str, list[dict[str, float]]], dict[str, Any]]:
    """Trains PiCIE (resuming from its checkpoint folder); returns the network twice (catalog copy and MLflow
    model), the per-epoch metrics history and a summary of the run (init used, fingerprint, resumed epoch)."""
    _check_images(train_images, val_images, "picie.train's inputs")
    target = resolve_device(device)
    result = train_picie(train_images, val_images, NetworkConfig(**network), ViewConfig(**views),
                         ClusterConfig(**_with_k(clustering, dataset["num_classes"])), LossConfig(**loss),
                         TrainConfig(**training), EvalConfig(**_with_k(evaluation, dataset["num_classes"])),
                         dataset["num_classes"], seed, target, resolve_num_workers(num_workers, target))
    return result.network, result.network, result.history, result.info


def extract_features(state: PiCIENet | Mapping[str, torch.Tensor], train_images: ShardStore, val_images: ShardStore,
                     network: dict[str, Any], views: dict[str, Any], evaluation: dict[str, Any], device: str,
                     num_workers: int | str) -> tuple[PiCIEFeatureStream, PiCIEFeatureStream]:
    """Lazy streams of the trained network's features (raw, float16, stride 4) of the train and val images."""
    _check_images(train_images, val_images, "picie.extract_features' inputs")
    net = PiCIENet(NetworkConfig(**network).arch)
    net.load_state_dict(state.state_dict() if isinstance(state, torch.nn.Module) else state)
    weights_id = state_fingerprint(net)
    target = resolve_device(device)
    workers = resolve_num_workers(num_workers, target)
    return tuple(PiCIEFeatureStream(store, net, target, evaluation["batch_size"], views["input_size"], weights_id,
                                    workers)
                 for store in (train_images, val_images))  # type: ignore[return-value]


def fit_eval_kmeans(train_features: ShardStore, network: dict[str, Any], evaluation: dict[str, Any],
                    dataset: dict[str, Any], seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The paper's final evaluation: a fresh k-means (K_test) on the un-augmented train features (cosine).

    Returned twice (the versioned catalog copy and the MLflow run's models/), with what `predict` needs to rebuild
    the features: the network's arch, its input size and the fingerprint of the weights the centroids belong to.
    """
    config = EvalConfig(**_with_k(evaluation, dataset["num_classes"])).kmeans(seed)
    vectors = train_features.sample_vectors("feat", config.sample_size, seed)
    model = {"input": "feat", "metric": config.metric, "centroids": fit_kmeans(vectors, config).tolist(),
             "backbone": train_features.attrs.get("backbone"), "weights": train_features.attrs.get("weights"),
             "arch": network["arch"], "input_size": train_features.attrs.get("input_size"),
             INGESTION: train_features.attrs.get(INGESTION)}
    return model, model


def predict(kmeans: dict[str, Any], val_features: ShardStore, dataset: dict[str, Any], device: str,
            num_workers: int | str) -> CentroidPredictionStream:
    """Lazy val predictions: cosine scores at stride 4, upsampled bilinearly to the crop, argmax."""
    check_model_ingestion(kmeans, val_features)
    crop, target = dataset["crop"], resolve_device(device)
    return CentroidPredictionStream(val_features, kmeans["input"], False,
                                    np.asarray(kmeans["centroids"], dtype=np.float32), kmeans["metric"],
                                    (crop, crop), target, num_workers=resolve_num_workers(num_workers, target))


def plot_curves(metrics: dict[str, list[dict[str, float]]]) -> Figure:
    """The per-epoch curves of the training history (losses, timings, monitoring scores)."""
    return plot_training_curves(metrics, "PiCIE training")
