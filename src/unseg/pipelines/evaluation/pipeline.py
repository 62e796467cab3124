"""Evaluation: baselines (rgb_kmeans, kmeans) -> val predictions -> scores of every method -> table and plots.

Every method contributes `<method>.val_predictions` (cluster ids at the evaluation crop); scoring, the table and the
plots are the same template for all, so a new method adds one entry to METHODS and its own pipeline.
"""

from kedro.pipeline import Pipeline, node, pipeline

from unseg.pipelines.evaluation.nodes import (
    compare_methods,
    fit_feature_kmeans,
    fit_probe,
    fit_rgb_kmeans,
    plot_qualitative,
    predict_with_centroids,
    scorer,
    twice,
)

# method -> (fit node, train input, val input); the order is the table's
BASELINES = {
    "rgb_kmeans": (fit_rgb_kmeans, "prm_train_images", "prm_val_images"),
    "kmeans": (fit_feature_kmeans, "feat_train", "feat_val"),
}
# methods whose own pipelines (picie, primaps) write <method>.val_predictions; scored here like the baselines
LEARNED = ("picie", "primaps_em", "primaps_em_crf", "primaps_em_student", "picie_primaps_em", "picie_primaps_em_crf",
           "picie_primaps_em_student")
# unsupervised methods first, the supervised upper bound last
METHODS = (*BASELINES, *LEARNED, "linear_probe")


def baseline_pipeline(method: str) -> Pipeline:
    """Fit on train, predict val, score: namespace `<method>` (outputs <method>.model (and its MLflow copy
    .model_mlflow), .val_predictions, .scores)."""
    fit, train, val = BASELINES[method]
    return pipeline(
        [
            node(twice(fit), ["train", "params:kmeans", "params:dataset", "params:seed"], ["model", "model_mlflow"],
                 name="fit"),
            node(predict_with_centroids, ["model", "val", "params:dataset", "params:device",
                                          "params:loader.num_workers"], "val_predictions", name="predict"),
        ],
        namespace=method,
        inputs={"train": train, "val": val},
        parameters={"params:kmeans": f"params:evaluation.{method}", "params:dataset": "params:dataset",
                    "params:seed": "params:seed", "params:device": "params:device",
                    "params:loader.num_workers": "params:loader.num_workers"},
    ) + scoring_pipeline(method)


def probe_pipeline() -> Pipeline:
    """The supervised upper bound (`linear_probe`): trained on train labels, evaluation only."""
    return pipeline(
        [
            node(twice(fit_probe), ["feat_train", "prm_train_images", "params:probe", "params:dataset",
                                    "params:seed", "params:device"], ["model", "model_mlflow"], name="fit"),
            node(predict_with_centroids, ["model", "feat_val", "params:dataset", "params:device",
                                          "params:loader.num_workers"], "val_predictions", name="predict"),
        ],
        namespace="linear_probe",
        inputs={"feat_train", "prm_train_images", "feat_val"},
        parameters={"params:probe": "params:evaluation.linear_probe", "params:dataset": "params:dataset",
                    "params:seed": "params:seed", "params:device": "params:device",
                    "params:loader.num_workers": "params:loader.num_workers"},
    ) + scoring_pipeline("linear_probe")


def scoring_pipeline(method: str) -> Pipeline:
    """Score `<method>.val_predictions` against the val labels into `<method>.scores`."""
    return pipeline(
        [node(scorer(method), ["val_predictions", "prm_val_images", "params:dataset"], "scores", name="score")],
        namespace=method,
        inputs={"prm_val_images"},
        parameters={"params:dataset"},
    )


def create_pipeline(**kwargs: object) -> Pipeline:
    outputs = [f"{m}.{kind}" for m in METHODS for kind in ("val_predictions", "scores")]
    report = pipeline([
        node(compare_methods, [f"{m}.scores" for m in METHODS],
             ["rpt_comparison_table", "rpt_comparison_markdown", "rpt_scores", "evaluation_metrics",
              "rpt_confusion_plots", "rpt_iou_bars"], name="compare_methods"),
        node(plot_qualitative, ["prm_val_images", "params:evaluation.overlay_images", "params:dataset", *outputs],
             "rpt_overlay_grid", name="plot_qualitative"),
    ])
    scored = sum((scoring_pipeline(m) for m in LEARNED), Pipeline([]))
    return sum((baseline_pipeline(m) for m in BASELINES), Pipeline([])) + scored + probe_pipeline() + report
