"""Predict: a folder of new images -> label maps (class ids) and overlays, with a fitted model.

    kedro run --pipelines predict --params predict.input_dir=/path/to/images[,predict.method=primaps_em]
                                          [,predict.run_id=<MLflow run id>]

The model (`predict_model`, a TrainedModelDataset) is `predict.method`'s fitted model (kmeans by default; any method
of the comparison table but rgb_kmeans) from this project's latest run, or from an MLflow run's artifacts with
`predict.run_id`; its clusters are named through the method's val Hungarian mapping. It scores the frozen backbone of
`features.*`, or for picie and picie_primaps_em* PiCIE's trained network of the same run; `_crf` methods add the
DenseCRF of `primaps.crf`. Images with a longer side above `predict.max_side` are segmented (and written) at that
size. Every run writes a new version (`predict_outputs`, `predict_report`); nothing of earlier runs is replaced. A
missing or image-less input folder, or one whose images are all unreadable, fails the run before anything is saved.
Not part of `__default__`: it needs your images.
"""

from kedro.pipeline import Pipeline, node, pipeline

from unseg.pipelines.predict.nodes import predict_metrics, segment_images


def create_pipeline(**kwargs: object) -> Pipeline:
    return pipeline([
        node(segment_images, ["predict_images", "predict_model", "params:features", "params:primaps.crf",
                              "params:dataset", "params:predict", "params:device"],
             ["predict_outputs", "predict_report"], name="segment_images"),
        node(predict_metrics, "predict_report", "predict_metrics", name="predict_metrics"),
    ])
