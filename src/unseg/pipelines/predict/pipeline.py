"""Predict: a folder of new images -> label maps (class ids) and overlays, with a fitted model.

    kedro run --pipelines predict --params predict.input_dir=/path/to/images

The model is the latest fitted `kmeans` model in the catalog, on the frozen backbone of `features.*`, its clusters
named through its val Hungarian mapping (`create_pipeline(method="linear_probe")` builds the same for the probe).
Not part of `__default__`: it needs your images.
"""

from kedro.pipeline import Pipeline, node, pipeline

from unseg.pipelines.predict.nodes import predict_metrics, segment_images

# methods whose fitted model is a centroid/linear head on the frozen backbone features
PREDICTABLE = ("kmeans", "linear_probe")


def create_pipeline(method: str = "kmeans", **kwargs: object) -> Pipeline:
    if method not in PREDICTABLE:
        raise ValueError(f"predict supports {', '.join(PREDICTABLE)}, not {method!r}")
    return pipeline([
        node(segment_images, ["predict_images", f"{method}.model", f"{method}.scores", "params:features",
                              "params:dataset", "params:predict", "params:device"],
             ["predict_outputs", "predict_report"], name="segment_images"),
        node(predict_metrics, "predict_report", "predict_metrics", name="predict_metrics"),
    ])
