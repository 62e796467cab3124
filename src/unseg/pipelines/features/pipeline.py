"""Features: prepared images -> frozen backbone -> feature stores (train, val)."""

from kedro.pipeline import Pipeline, node, pipeline

from unseg.pipelines.features.nodes import extract_features


def create_pipeline(**kwargs: object) -> Pipeline:
    return pipeline([
        node(extract_features, ["prm_train_images", "prm_val_images", "params:features", "params:device",
                                "params:loader.num_workers"],
             ["feat_train", "feat_val"], name="extract_features"),
    ])
