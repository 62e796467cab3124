"""The features pipeline run by Kedro's SequentialRunner on the prepared stores of a real ingestion run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from kedro.io import DataCatalog

from unseg.pipelines import features, ingestion

STORES = ("prm_train_images", "prm_val_images", "feat_train", "feat_val")
MEMORY = ("int_image_index", "int_index_skipped", "ingestion_metrics")
NUM_TRAIN, NUM_VAL = 12, 6


@pytest.fixture(scope="module", params=[32, 48], ids=["crop32", "crop48"])
def featurised(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               pipeline_params: Callable[..., dict[str, Any]], pipeline_catalog: Callable[..., DataCatalog],
               run_pipeline: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """Ingestion alone, then the features pipeline on its stores (as `kedro run --pipeline ...` twice would).

    Parameters shrunk further: 12 + 6 images of 48x64, cropped to the fixture's crop; random weights, batches of 3.
    """
    crop = request.param
    tmp = tmp_path_factory.mktemp(f"features{crop}")
    params = pipeline_params(tmp / "raw", crop=crop, num_train=NUM_TRAIN, num_val=NUM_VAL, feature_batch_size=3)
    catalog = pipeline_catalog(tmp / "data", params, STORES, empty=MEMORY)
    run_pipeline(ingestion.create_pipeline(), catalog, load=False)
    outputs = run_pipeline(features.create_pipeline(), catalog, load=False)
    return {"crop": crop, "catalog": catalog, "outputs": outputs}


def test_pipeline_inputs_and_outputs() -> None:
    pipe = features.create_pipeline()
    assert pipe.inputs() == {"prm_train_images", "prm_val_images", "params:features", "params:device",
                             "params:loader.num_workers"}
    assert pipe.outputs() == {"feat_train", "feat_val"}
    # chained after ingestion, only the prepared stores connect them
    chained = ingestion.create_pipeline() + pipe
    assert chained.from_nodes("extract_features").inputs() == pipe.inputs()
    # what features need of ingestion: the index and the preparation, not the report
    upstream = chained.to_nodes("extract_features")
    assert {n.name for n in upstream.nodes} == {"build_image_index", "prepare_images", "extract_features"}


@pytest.mark.parametrize("split, count, shard_counts", [("train", NUM_TRAIN, [4, 4, 4]), ("val", NUM_VAL, [4, 2])])
def test_feature_stores_follow_the_prepared_stores(featurised: dict[str, Any], split: str, count: int,
                                                   shard_counts: list[int]) -> None:
    catalog, crop = featurised["catalog"], featurised["crop"]
    feats = featurised["outputs"][f"feat_{split}"].load()
    images = catalog.load(f"prm_{split}_images")
    assert len(feats) == count
    assert feats.ids == images.ids
    assert feats.shard_counts == images.shard_counts == shard_counts
    # efficientnet_lite0: 152 channels on the stride-8 grid of the crop
    assert {k: (s.dtype, s.shape) for k, s in feats.fields.items()} == {
        "feat": ("float16", (152, crop // 8, crop // 8))}
    # the ingestion the images came from is passed on: train and val features of one ingestion share it
    assert feats.attrs == {"backbone": "efficientnet_lite0", "stride": 8, "dim": 152, "weights": "random",
                           "images": images.fingerprint, "split": split, "ingestion": images.attrs["ingestion"]}
    stacked = np.concatenate([s["feat"] for s in feats.iter_shards()])
    assert stacked.shape == (count, 152, crop // 8, crop // 8) and stacked.dtype == np.float16
    assert np.isfinite(stacked).all()
    assert stacked.std(axis=(2, 3)).max() > 0  # features vary over the grid, not a constant fill


def test_features_differ_between_images(featurised: dict[str, Any]) -> None:
    feats = featurised["catalog"].load("feat_val")
    first, second = feats.item(0)["feat"].astype(np.float32), feats.item(1)["feat"].astype(np.float32)
    assert not np.allclose(first, second)
