"""Ingestion: source -> index table -> prepared train/val stores -> counts."""

from kedro.pipeline import Pipeline, node, pipeline

from unseg.pipelines.ingestion.nodes import build_image_index, prepare_images, report_ingestion


def create_pipeline(**kwargs: object) -> Pipeline:
    return pipeline([
        node(build_image_index, ["params:dataset", "params:seed"], ["int_image_index", "int_index_skipped"],
             name="build_image_index"),
        node(prepare_images, ["int_image_index", "params:dataset", "params:seed", "params:ingestion.shard_size",
                              "params:ingestion.num_workers"], ["prm_train_images", "prm_val_images"],
             name="prepare_images"),
        node(report_ingestion, ["int_image_index", "int_index_skipped", "prm_train_images", "prm_val_images"],
             "ingestion_metrics", name="report_ingestion"),
    ])
