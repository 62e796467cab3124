"""PriMaPs nodes: mask proposals over the train split, PriMaPs-EM prototypes on a base feature store, val predictions.

Thin adapters: they turn parameter blocks into core configs, choose the feature sources (cached store or the frozen
backbone online), and hand over to `unseg.core.primaps`.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from unseg.core.backbones import create_backbone
from unseg.core.devices import resolve_device
from unseg.core.loader import resolve_num_workers
from unseg.core.primaps.config import parse_config
from unseg.core.primaps.crf import CRFConfig
from unseg.core.primaps.masks import ProposalStream, proposal_stats
from unseg.core.primaps.predict import PrototypePredictionStream, val_scores
from unseg.core.primaps.preview import plot_mask_preview
from unseg.core.primaps.proposals import ProposalConfig
from unseg.core.primaps.sources import BackboneFeatures, FeatureSource, StoreFeatures
from unseg.core.primaps.train import EMConfig, EMData, fit_em
from unseg.core.store import (
    INGESTION,
    ShardStore,
    check_made_from,
    check_model_ingestion,
    check_same_ingestion,
    check_split,
    fingerprint,
)
from unseg.core.visualise import plot_training_curves

BASES = ("frozen", "picie")
NODE_KEYS = ("checkpoint_dir", "monitor_val")  # primaps.em keys for the node, not the algorithm


# ------------------------------------------------------------------------------------------------------ proposals
def propose_train_masks(train_images: ShardStore, train_features: ShardStore, proposals: dict[str, Any],
                        crf: dict[str, Any], device: str, num_workers: int | str) -> ProposalStream:
    """Lazy PriMaPs label maps of the train split from the frozen backbone's features."""
    check_split("prm_train_images", train_images, "train")
    check_same_ingestion(prm_train_images=train_images, feat_train=train_features, what="propose_masks' inputs")
    check_made_from("feat_train", train_features, "prm_train_images", train_images)
    target = resolve_device(device)
    return ProposalStream(train_features, train_images, parse_config(ProposalConfig, proposals, "primaps.proposals"),
                          parse_config(CRFConfig, crf, "primaps.crf"), target,
                          resolve_num_workers(num_workers, target))


def report_proposals(masks: ShardStore) -> dict[str, dict[str, float]]:
    """primaps/masks_per_image, primaps/empty_images, primaps/mask_coverage as MLflow metrics."""
    stats = proposal_stats(masks)
    names = {"masks_per_image": "masks_per_image", "empty_images": "empty_images", "coverage": "mask_coverage"}
    return {f"primaps/{names[k]}": {"value": float(v), "step": 0} for k, v in stats.items()}


def plot_proposals(train_images: ShardStore, masks: ShardStore, num_images: int) -> Figure:
    """The first train images beside their stored PriMaPs (kedro-viz preview, report)."""
    check_made_from("mi_primaps_train_masks", masks, "prm_train_images", train_images)
    count = min(num_images, len(masks))
    images = np.stack([train_images.item(i, ["image"])["image"] for i in range(count)])
    return plot_mask_preview(images, np.stack([masks.item(i, ["mask"])["mask"] for i in range(count)]))


# ------------------------------------------------------------------------------------------------------------ EM
def _base_setting(base: dict[str, Any], augment: bool) -> tuple[str, bool]:
    """(base features name, whether the backbone runs online) of a `primaps.base.<method>` block."""
    unknown = set(base) - {"features", "init", "augment"}
    if unknown:
        raise ValueError(f"primaps.base: unknown keys {sorted(unknown)}; valid: augment, features, init")
    if base["features"] not in BASES:
        raise ValueError(f"primaps.base features {base['features']!r}; valid: {', '.join(BASES)}")
    online = augment if base.get("augment") is None else bool(base["augment"])
    if online and base["features"] != "frozen":
        raise ValueError(f"primaps: augment=true runs the base network online, which is only available for the frozen "
                         f"backbone; set primaps.base.<method>.augment: false for base {base['features']!r} (its "
                         "cached features are then used)")
    return base["features"], online


def _backbone_source(images: ShardStore, features: dict[str, Any], cached: ShardStore, device: Any, augment: bool,
                     flip_average: bool, num_workers: int) -> BackboneFeatures:
    if cached.attrs.get("backbone") != features["backbone"]:
        raise ValueError(f"primaps online mode: the cached features come from {cached.attrs.get('backbone')!r}, but "
                         f"features.backbone is {features['backbone']!r}")
    backbone = create_backbone(features["backbone"], features["weights"], features["pretrained"]).to(device)
    return BackboneFeatures(images, backbone, device, augment=augment, flip_average=flip_average,
                            num_workers=num_workers)


def _check_inputs(**stores: ShardStore) -> None:
    """One ingestion for all; each split where expected; features and masks made from the images given."""
    check_same_ingestion(**stores, what="PriMaPs-EM's inputs")
    for name, store in stores.items():
        split = "train" if name in ("base_train", "masks", "train_images") else "val"
        check_split(name, store, split)
    for derived, images in (("base_train", "train_images"), ("masks", "train_images"), ("base_val", "val_images")):
        if derived in stores and images in stores:
            check_made_from(derived, stores[derived], images, stores[images])


def _fit(method: str, base_train: ShardStore, base_val: ShardStore, masks: ShardStore, train_images: ShardStore,
         val_images: ShardStore, augment: bool, em: dict[str, Any], base: dict[str, Any], features: dict[str, Any],
         dataset: dict[str, Any], seed: int, device: str, num_workers: int | str,
         centroids: np.ndarray | None) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[dict[str, float]]]]:
    name, online = _base_setting(base, augment)
    _check_inputs(base_train=base_train, base_val=base_val, masks=masks, train_images=train_images,
                  val_images=val_images)
    missing = set(NODE_KEYS) - set(em)
    if missing:
        raise ValueError(f"primaps.em: missing keys {sorted(missing)}")
    values = {k: v for k, v in em.items() if k not in NODE_KEYS}
    values["num_prototypes"] = values.get("num_prototypes") or dataset["num_classes"]
    config = parse_config(EMConfig, values, "primaps.em", init=base["init"], seed=seed)
    if tuple(masks.fields["mask"].shape) != (dataset["crop"], dataset["crop"]):
        raise ValueError(f"primaps: masks of {masks.fields['mask'].shape} but dataset.crop is {dataset['crop']}")
    target = resolve_device(device)
    workers = resolve_num_workers(num_workers, target)
    teacher = StoreFeatures(base_train, target, num_workers=workers)
    student: FeatureSource = teacher
    val: FeatureSource = StoreFeatures(base_val, target, num_workers=workers)
    if online:
        student = _backbone_source(train_images, features, base_train, target, True, False, workers)
        val = _backbone_source(val_images, features, base_val, target, False, True, workers)
    sample = base_train.sample_vectors("feat", config.init_sample, seed) if config.init == "pca" else np.zeros((0, 0))
    key = fingerprint(method, asdict(config), name, online, base_train.fingerprint, masks.fingerprint,
                      None if centroids is None else np.round(centroids, 6).tolist(),
                      features if online else None)
    monitor = ((lambda model: val_scores(model, val, val_images, dataset["num_classes"], num_workers=workers))
               if em["monitor_val"] else None)
    result = fit_em(EMData(teacher, student, masks, sample), config, target,
                    Path(em["checkpoint_dir"]) / f"{method}-{key}", centroids, monitor, workers)
    # the base features' producer (a frozen backbone, or picie_<arch> with the fingerprint of its weights)
    backbone, weights = base_train.attrs.get("backbone"), base_train.attrs.get("weights")
    model = {"method": method, "base": name, "backbone": backbone, "weights": weights, "init": config.init,
             "online": online, "num_prototypes": config.num_prototypes, "feature_dim": teacher.dim,
             "teacher": result.teacher.state(), "student": result.student.state(), "epochs": config.epochs,
             "steps": result.steps, "teacher_updates": result.teacher_updates, "skipped_images": result.skipped,
             "checkpoint_key": key, INGESTION: base_train.attrs.get(INGESTION)}
    prefix = "primaps" if method == "primaps_em" else method
    metrics: dict[str, list[dict[str, float]]] = {}
    for epoch, record in enumerate(result.history):
        for metric, value in record.items():
            metrics.setdefault(f"{prefix}/{metric}", []).append({"value": float(value), "step": epoch})
    for epoch, value in enumerate(result.warmup):
        metrics.setdefault(f"{prefix}/warmup_loss", []).append({"value": float(value), "step": epoch})
    metrics[f"{prefix}/skipped_images"] = [{"value": float(len(result.skipped)), "step": 0}]
    return model, model, metrics


def fit_prototypes(base_train: ShardStore, base_val: ShardStore, masks: ShardStore, train_images: ShardStore,
                   val_images: ShardStore, augment: bool, em: dict[str, Any], base: dict[str, Any],
                   features: dict[str, Any], dataset: dict[str, Any], seed: int, device: str, num_workers: int | str,
                   method: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[dict[str, float]]]]:
    """PriMaPs-EM on a base feature store, prototypes initialised from its principal directions.

    Returns:
        The model (teacher = the model, and student) twice (versioned catalog, MLflow) and the per-epoch metrics.
    """
    return _fit(method, base_train, base_val, masks, train_images, val_images, augment, em, base, features, dataset,
                seed, device, num_workers, None)


def fit_prototypes_from_centroids(base_train: ShardStore, base_val: ShardStore, masks: ShardStore,
                                  train_images: ShardStore, val_images: ShardStore, augment: bool, em: dict[str, Any],
                                  base: dict[str, Any], features: dict[str, Any], dataset: dict[str, Any], seed: int,
                                  device: str, num_workers: int | str, kmeans: dict[str, Any],
                                  method: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """PriMaPs-EM on another method's features, prototypes initialised from its cluster centres (e.g. PiCIE's)."""
    if kmeans.get("input") != "feat":
        raise ValueError(f"primaps: the base method's centroids must act on features ('input': 'feat'), got "
                         f"{kmeans.get('input')!r}")
    centroids = np.asarray(kmeans["centroids"], dtype=np.float32)
    return _fit(method, base_train, base_val, masks, train_images, val_images, augment, em, base, features, dataset,
                seed, device, num_workers, centroids)


def predict_val(model: dict[str, Any], base_val: ShardStore, val_images: ShardStore, augment: bool,
                crf: dict[str, Any], base: dict[str, Any], features: dict[str, Any], device: str,
                num_workers: int | str) -> tuple[PrototypePredictionStream, PrototypePredictionStream,
                                                 PrototypePredictionStream]:
    """Lazy val predictions: teacher, teacher + DenseCRF, student (cluster ids at the evaluation crop).

    Features: cached val features (augment false), or flip-averaged features of the frozen backbone run online.
    """
    name, online = _base_setting(base, augment)
    _check_inputs(base_val=base_val, val_images=val_images)
    check_model_ingestion(model, base_val)
    target = resolve_device(device)
    workers = resolve_num_workers(num_workers, target)
    source: FeatureSource = StoreFeatures(base_val, target, num_workers=workers)
    if online:
        source = _backbone_source(val_images, features, base_val, target, False, True, workers)
    tag = {"method": model["method"], "base": name, "online": online, "features": base_val.fingerprint}
    crf_config = parse_config(CRFConfig, {**crf, "enabled": True}, "primaps.crf")
    return (PrototypePredictionStream(model["teacher"], source, val_images, None, target, {**tag, "model": "teacher"},
                                      num_workers=workers),
            PrototypePredictionStream(model["teacher"], source, val_images, crf_config, target,
                                      {**tag, "model": "teacher"}, num_workers=workers),
            PrototypePredictionStream(model["student"], source, val_images, None, target, {**tag, "model": "student"},
                                      num_workers=workers))


def plot_curves(metrics: dict[str, list[dict[str, float]]], method: str) -> Figure:
    """The per-epoch curves of one EM instance (loss, pseudo-label coverage, agreement, monitoring scores)."""
    return plot_training_curves(metrics, f"{method} training")
