"""PiCIE: prepared images -> trained network (checkpointed per epoch) -> its features -> fresh k-means -> val
predictions (`picie.val_predictions`, scored by the evaluation pipeline like every method)."""

from kedro.pipeline import Pipeline, node, pipeline

from unseg.pipelines.picie.nodes import extract_features, fit_eval_kmeans, plot_curves, predict, train

GLOBAL_PARAMS = {"params:dataset", "params:seed", "params:device", "params:loader.num_workers"}


def create_pipeline(**kwargs: object) -> Pipeline:
    return pipeline(
        [
            node(train, ["prm_train_images", "prm_val_images", "params:network", "params:views", "params:clustering",
                         "params:loss", "params:train", "params:eval", "params:dataset", "params:seed",
                         "params:device", "params:loader.num_workers"],
                 ["network", "mlflow_model", "metrics", "train_info"], name="train"),
            node(plot_curves, "metrics", "training_curves", name="plot_training_curves"),
            node(extract_features, ["network", "prm_train_images", "prm_val_images", "params:network", "params:views",
                                    "params:eval", "params:device", "params:loader.num_workers"],
                 ["feat_picie_train", "feat_picie_val"], name="extract_features"),
            node(fit_eval_kmeans, ["feat_picie_train", "params:network", "params:eval", "params:dataset",
                                   "params:seed"], ["kmeans", "model_mlflow"], name="fit_kmeans"),
            node(predict, ["kmeans", "feat_picie_val", "params:dataset", "params:device", "params:loader.num_workers"],
                 "val_predictions", name="predict"),
        ],
        namespace="picie",
        inputs={"prm_train_images", "prm_val_images"},
        outputs={"feat_picie_train", "feat_picie_val"},
        parameters=GLOBAL_PARAMS,
    )
