"""Evaluation nodes: the k-means baselines, scoring of every method on val, the comparison table and plots."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from unseg.core.devices import resolve_device
from unseg.core.evaluate import (
    CentroidPredictionStream,
    comparison_table,
    confusion_of,
    mapped_predictions,
    matched_confusion,
    method_scores,
    metrics_of,
)
from unseg.core.kmeans import KMeansConfig, fit_kmeans
from unseg.core.linear_probe import LinearProbeConfig, fit_linear_probe
from unseg.core.loader import resolve_num_workers
from unseg.core.store import INGESTION, ShardStore, check_made_from, check_model_ingestion, check_same_ingestion
from unseg.core.visualise import label_palette, plot_confusion, plot_iou_bars, plot_overlay_grid

logger = logging.getLogger(__name__)


def _kmeans_config(params: dict[str, Any], num_classes: int, seed: int) -> KMeansConfig:
    values = dict(params)
    values["num_clusters"] = values.get("num_clusters") or num_classes  # null: one cluster per class
    return KMeansConfig(**values, seed=seed)


def fit_rgb_kmeans(train_images: ShardStore, kmeans: dict[str, Any], dataset: dict[str, Any],
                   seed: int) -> dict[str, Any]:
    """The floor: k-means on raw RGB pixel colours (in [0, 1]) of the train split."""
    config = _kmeans_config(kmeans, dataset["num_classes"], seed)
    pixels = train_images.sample_vectors("image", config.sample_size, seed, channels_last=True) / 255.0
    return {"input": "image", "metric": config.metric, "centroids": fit_kmeans(pixels, config).tolist(),
            INGESTION: train_images.attrs.get(INGESTION)}


def fit_feature_kmeans(train_features: ShardStore, kmeans: dict[str, Any], dataset: dict[str, Any],
                       seed: int) -> dict[str, Any]:
    """The paper's baseline: k-means on the frozen backbone features of the train split."""
    config = _kmeans_config(kmeans, dataset["num_classes"], seed)
    vectors = train_features.sample_vectors("feat", config.sample_size, seed)
    return {"input": "feat", "metric": config.metric, "centroids": fit_kmeans(vectors, config).tolist(),
            "backbone": train_features.attrs.get("backbone"), INGESTION: train_features.attrs.get(INGESTION)}


def fit_probe(train_features: ShardStore, train_images: ShardStore, probe: dict[str, Any], dataset: dict[str, Any],
              seed: int, device: str) -> dict[str, Any]:
    """The supervised upper bound: a linear 1x1 probe on the frozen train features, trained on train labels."""
    check_same_ingestion(feat_train=train_features, prm_train_images=train_images, what="the probe's inputs")
    check_made_from("feat_train", train_features, "prm_train_images", train_images)
    conv = fit_linear_probe(train_features, train_images, dataset["num_classes"],
                            LinearProbeConfig(**probe, seed=seed), resolve_device(device))
    return {"input": "feat", "metric": "linear", "centroids": conv.weight[:, :, 0, 0].cpu().tolist(),
            "bias": conv.bias.cpu().tolist(), "backbone": train_features.attrs.get("backbone"),
            INGESTION: train_features.attrs.get(INGESTION)}


def predict_with_centroids(model: dict[str, Any], val_source: ShardStore, dataset: dict[str, Any], device: str,
                           num_workers: int | str) -> CentroidPredictionStream:
    """Lazy val predictions of a centroid (or linear) model at the evaluation crop (`loader.num_workers` processes
    read the val store ahead).

    Raises:
        StoreError: the model was fitted on a train store of another ingestion than `val_source`'s.
    """
    check_model_ingestion(model, val_source)
    crop = dataset["crop"]
    bias = np.asarray(model["bias"], dtype=np.float32) if "bias" in model else None
    target = resolve_device(device)
    return CentroidPredictionStream(val_source, model["input"], model["input"] == "image",
                                    np.asarray(model["centroids"], dtype=np.float32), model["metric"], (crop, crop),
                                    target, bias=bias, num_workers=resolve_num_workers(num_workers, target))


def score_predictions(predictions: ShardStore | None, val_images: ShardStore, dataset: dict[str, Any],
                      method: str) -> dict[str, Any]:
    """Hungarian-matched Acc / mIoU / per-class IoU of one method on val.

    When the method's pipeline has not run, or its stored predictions belong to other val images (another data set
    or crop, another ingestion), the record is only {"method", "skipped": why} (logged): the table and plots leave
    the method out.
    """
    if predictions is None:
        skipped = "no val predictions (its pipeline has not run)"
    elif predictions.attrs.get(INGESTION) != val_images.attrs.get(INGESTION):
        skipped = (f"the stored val predictions {predictions.root} come from ingestion "
                   f"{predictions.attrs.get(INGESTION)}, the val images {val_images.root} from "
                   f"{val_images.attrs.get(INGESTION)}; run its pipeline again")
    elif predictions.ids != val_images.ids or predictions.fields["pred"].shape != val_images.fields["label"].shape:
        skipped = f"the stored val predictions {predictions.root} belong to other val images; run its pipeline again"
    else:
        skipped = None
    if skipped:
        logger.warning("%s: %s: left out of the comparison", method, skipped)
        return {"method": method, "skipped": skipped}
    num_clusters = int(predictions.attrs["num_clusters"])
    hist = confusion_of(predictions, val_images, dataset["num_classes"], num_clusters)
    attrs = val_images.attrs
    return method_scores(method, hist, attrs["class_names"], attrs["thing_classes"], attrs["stuff_classes"])


def scorer(method: str) -> Callable[..., dict[str, Any]]:
    """score_predictions bound to a method name (a node per method)."""
    return functools.update_wrapper(functools.partial(score_predictions, method=method), score_predictions)


def twice(fit: Callable[..., dict[str, Any]]) -> Callable[..., tuple[dict[str, Any], dict[str, Any]]]:
    """`fit` returning its model twice: the versioned catalog copy and the MLflow run's (models/)."""

    @functools.wraps(fit)
    def fit_twice(*args: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        model = fit(*args)
        return model, model

    return fit_twice


def compare_methods(*scores: dict[str, Any]) -> tuple[pd.DataFrame, str, dict[str, Any], dict[str, Any],
                                                      dict[str, Figure], Figure]:
    """The comparison table (DataFrame and markdown), every scoring record by method (mappings included: predict
    reads them), MLflow metrics, confusion heatmaps and IoU bars of the methods that were scored (skipped ones are
    left out)."""
    records = [r for r in scores if "skipped" not in r]
    table = comparison_table(records)
    metrics = {name: {"value": value, "step": 0} for name, value in metrics_of(records).items()}
    names = records[0]["class_names"]
    confusions = {f"confusion_{r['method']}.png": plot_confusion(matched_confusion(r), names,
                                                                 f"{r['method']} (Hungarian-matched, row %)")
                  for r in records}
    ious = {r["method"]: np.array([np.nan if v is None else v for v in r["iou"]], dtype=float) for r in records}
    by_method = {r["method"]: r for r in records}
    return table, table.to_markdown(index=False), by_method, metrics, confusions, plot_iou_bars(ious, names)


def plot_qualitative(val_images: ShardStore, num_images: int, dataset: dict[str, Any], *method_outputs: Any) -> Figure:
    """Image | ground truth | each method (clusters mapped to classes), for the first val images.

    method_outputs alternate (predictions store, scores record) per method; methods without scores are left out.
    """
    count = min(num_images, len(val_images))
    items = [val_images.item(i, ["image", "label"]) for i in range(count)]
    images = np.stack([it["image"] for it in items])
    labels = np.stack([it["label"] for it in items])
    ignore = dataset["ignore_index"]
    predictions = {record["method"]: mapped_predictions(store, record, count, ignore)
                   for store, record in zip(method_outputs[::2], method_outputs[1::2], strict=True)
                   if "skipped" not in record}
    return plot_overlay_grid(images, labels, predictions, label_palette(dataset["num_classes"]), ignore)
