"""PriMaPs: train features -> mask proposals (once) -> PriMaPs-EM prototypes per base -> val predictions.

`create_pipeline()` (registered as `primaps`) is the proposals and PriMaPs-EM on the frozen backbone (namespace
`primaps_em`); `create_picie_primaps_pipeline()` (registered as `picie_primaps`) is the "PiCIE + PriMaPs-EM"
combination (namespace `picie_primaps_em`): the same
EM template on PiCIE's learned features, prototypes initialised from PiCIE's k-means centres, fed by the same stored
proposals (always from the frozen backbone); it needs PiCIE's outputs (`feat_picie_{train,val}`, `picie.kmeans`).
Each EM instance outputs, for the evaluation template, `<method>.val_predictions` (teacher),
`<method>_crf.val_predictions` (teacher + DenseCRF) and `<method>_student.val_predictions`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from kedro.pipeline import Pipeline, node, pipeline

from unseg.pipelines.primaps.nodes import (
    fit_prototypes,
    fit_prototypes_from_centroids,
    plot_curves,
    plot_proposals,
    predict_val,
    propose_train_masks,
    report_proposals,
)

MASKS = "mi_primaps_train_masks"  # mi_: the model-input layer (05)


def _bound(func: Callable[..., Any], method: str) -> Callable[..., Any]:
    """`func` with its `method` argument bound (one node per EM instance)."""
    return functools.update_wrapper(functools.partial(func, method=method), func)


def proposals_pipeline() -> Pipeline:
    """Mask proposals over the train split from the frozen backbone features, computed once and stored."""
    return pipeline(
        [
            node(propose_train_masks, ["prm_train_images", "feat_train", "params:primaps.proposals",
                                       "params:primaps.crf", "params:device", "params:loader.num_workers"], MASKS,
                 name="propose_masks"),
            node(report_proposals, MASKS, "primaps_proposal_metrics", name="report_proposals"),
            node(plot_proposals, ["prm_train_images", MASKS, "params:primaps.preview_images"],
                 "rpt_primaps_masks_preview", name="plot_proposals"),
        ],
    )


def em_pipeline(method: str, base_train: str, base_val: str, centroids: str | None = None) -> Pipeline:
    """One PriMaPs-EM instance (namespace `method`) on a base feature store.

    Args:
        method: the namespace and method name, e.g. "primaps_em".
        base_train / base_val: the feature stores the prototypes score.
        centroids: a k-means model dataset ({"input": "feat", "centroids": ...}) to initialise the prototypes from;
            None: principal directions of the base train features plus the cosine k-means warm-up.
    """
    shared = ["base_train", "base_val", "masks", "prm_train_images", "prm_val_images", "params:primaps.augment",
              "params:primaps.em", "params:base", "params:features", "params:dataset", "params:seed", "params:device",
              "params:loader.num_workers"]
    fit = (node(_bound(fit_prototypes, method), shared, ["model", "model_mlflow", "training_metrics"], name="fit")
           if centroids is None else
           node(_bound(fit_prototypes_from_centroids, method), [*shared, "centroids"],
                ["model", "model_mlflow", "training_metrics"], name="fit"))
    predict = node(predict_val, ["model", "base_val", "prm_val_images", "params:primaps.augment", "params:primaps.crf",
                                 "params:base", "params:features", "params:device", "params:loader.num_workers"],
                   ["val_predictions", "crf_val_predictions", "student_val_predictions"], name="predict")
    inputs = {"base_train": base_train, "base_val": base_val, "masks": MASKS, "prm_train_images": "prm_train_images",
              "prm_val_images": "prm_val_images"}
    if centroids is not None:
        inputs["centroids"] = centroids
    curves = node(_bound(plot_curves, method), "training_metrics", "training_curves", name="plot_training_curves")
    return pipeline(
        [fit, predict, curves],
        namespace=method,
        inputs=inputs,
        outputs={"crf_val_predictions": f"{method}_crf.val_predictions",
                 "student_val_predictions": f"{method}_student.val_predictions"},
        parameters={"params:base": f"params:primaps.base.{method}", "params:primaps.augment": "params:primaps.augment",
                    "params:primaps.em": "params:primaps.em", "params:primaps.crf": "params:primaps.crf",
                    "params:features": "params:features", "params:dataset": "params:dataset",
                    "params:seed": "params:seed", "params:device": "params:device",
                    "params:loader.num_workers": "params:loader.num_workers"},
    )


def create_pipeline(**kwargs: object) -> Pipeline:
    """Mask proposals and PriMaPs-EM on the frozen backbone."""
    return proposals_pipeline() + em_pipeline("primaps_em", "feat_train", "feat_val")


def create_picie_primaps_pipeline() -> Pipeline:
    """PiCIE + PriMaPs-EM: needs `feat_picie_{train,val}` and `picie.kmeans` (PiCIE) and the stored proposals."""
    return em_pipeline("picie_primaps_em", "feat_picie_train", "feat_picie_val", centroids="picie.kmeans")
