"""The evaluation pipeline run by Kedro's SequentialRunner after real ingestion and features runs.

The chain is run in slices, as a reader would with --to-nodes / --from-nodes / --nodes: ingestion + features, the
fits, predict + score of every method, then the report nodes; and a re-run of one method with other settings. The
learned methods (PiCIE, PriMaPs-EM) have their own pipelines and tests; here copies of the kmeans predictions stand in
for their `<method>.val_predictions`, which is all the evaluation pipeline reads of them.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog
from kedro.pipeline import Pipeline
from matplotlib.figure import Figure

from unseg.core.evaluate import matched_confusion
from unseg.core.store import ShardStore
from unseg.datasets import ShardStoreDataset
from unseg.pipelines import evaluation, features, ingestion
from unseg.pipelines.evaluation.pipeline import BASELINES, LEARNED, METHODS

NUM_TRAIN, NUM_VAL, CROP, OVERLAY_ROWS = 12, 6, 32, 3
CLASS_NAMES = ["stripes", "dots", "grain", "waves", "checker", "disc", "square", "triangle"]
FITTED = (*BASELINES, "linear_probe")  # methods this pipeline fits and predicts itself
PREDICTIONS = tuple(f"{m}.val_predictions" for m in METHODS)
STORES = ("prm_train_images", "prm_val_images", "feat_train", "feat_val", *PREDICTIONS)


def parameters(pipeline_params: Callable[..., dict[str, Any]], root: Path) -> dict[str, Any]:
    """conf/base + conf/test parameters, shrunk further: 12 + 6 images of 48x64 cropped to 32, random weights."""
    params = pipeline_params(root, crop=CROP, num_train=NUM_TRAIN, num_val=NUM_VAL, feature_batch_size=4)
    for method in BASELINES:
        params["evaluation"][method].update(num_iters=10, sample_size=5000)
    params["evaluation"]["linear_probe"].update(epochs=2)
    params["evaluation"]["overlay_images"] = OVERLAY_ROWS
    return params


@pytest.fixture(scope="module")
def make_catalog(pipeline_catalog: Callable[..., DataCatalog]) -> Callable[..., DataCatalog]:
    """`make_catalog(data, params, pipe, **memory)`: ShardStoreDatasets under `data`, MemoryDatasets for everything
    else `pipe` uses (`memory` pre-filled)."""

    def make(data: Path, params: dict[str, Any], pipe: Pipeline, **memory: Any) -> DataCatalog:
        rest = {name for name in pipe.datasets() - set(STORES) if not name.startswith("params:")}
        return pipeline_catalog(data, params, STORES, filled={name: memory.get(name) for name in rest})

    return make


def full_pipeline() -> Pipeline:
    return ingestion.create_pipeline() + features.create_pipeline() + evaluation.create_pipeline()


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, pipeline_params: Callable[..., dict[str, Any]],
              make_catalog: Callable[..., DataCatalog], run_pipeline: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("evaluation")
    params = parameters(pipeline_params, tmp / "raw")
    full = full_pipeline()
    catalog = make_catalog(tmp / "data", params, full)
    run_pipeline(full.to_nodes("extract_features"), catalog)
    fitted = run_pipeline(full.only_nodes(*(f"{m}.fit" for m in FITTED)), catalog)
    run_pipeline(full.only_nodes(*(f"{m}.predict" for m in FITTED)), catalog)
    for method in LEARNED:
        shutil.copytree(tmp / "data" / "kmeans.val_predictions", tmp / "data" / f"{method}.val_predictions")
    scored = run_pipeline(full.only_nodes(*(f"{m}.score" for m in METHODS)), catalog)
    reports = run_pipeline(full.only_nodes("compare_methods", "plot_qualitative"), catalog)
    return {"tmp": tmp, "params": params, "catalog": catalog, "fitted": fitted, "scored": scored, "reports": reports}


def labelled_pixels(val: ShardStore) -> int:
    return sum(int(np.count_nonzero(s["label"] < len(CLASS_NAMES))) for s in val.iter_shards(["label"]))


def test_pipeline_shape() -> None:
    pipe = evaluation.create_pipeline()
    assert METHODS == ("rgb_kmeans", "kmeans", "picie", "primaps_em", "primaps_em_crf", "primaps_em_student",
                       "picie_primaps_em", "picie_primaps_em_crf", "picie_primaps_em_student", "linear_probe")
    assert {n.name for n in pipe.nodes} == {f"{m}.{step}" for m in FITTED for step in ("fit", "predict")} | {
        f"{m}.score" for m in METHODS} | {"compare_methods", "plot_qualitative"}
    data_inputs = {i for i in pipe.inputs() if not i.startswith("params:")}
    assert data_inputs == {"prm_train_images", "prm_val_images", "feat_train", "feat_val",
                           *(f"{m}.val_predictions" for m in LEARNED)}
    assert pipe.outputs() == {"evaluation_metrics", "rpt_comparison_table", "rpt_comparison_markdown", "rpt_scores",
                              "rpt_confusion_plots", "rpt_iou_bars", "rpt_overlay_grid",
                              *(f"{m}.model_mlflow" for m in FITTED)}


def test_models(evaluated: dict[str, Any]) -> None:
    catalog = evaluated["catalog"]
    rgb, feat = catalog.load("rgb_kmeans.model"), catalog.load("kmeans.model")
    assert (rgb["input"], rgb["metric"], feat["input"], feat["metric"]) == ("image", "euclidean", "feat", "cosine")
    rgb_c, feat_c = np.asarray(rgb["centroids"]), np.asarray(feat["centroids"])
    assert rgb_c.shape == (8, 3) and (rgb_c >= 0).all() and (rgb_c <= 1).all()  # colours in [0, 1]
    assert feat_c.shape == (8, 152)
    np.testing.assert_allclose(np.linalg.norm(feat_c, axis=1), 1.0, atol=1e-5)  # spherical
    assert feat["backbone"] == "efficientnet_lite0"
    for method in FITTED:  # the MLflow run's copy (models/<method>_model_mlflow.json)
        assert evaluated["fitted"][f"{method}.model_mlflow"] == catalog.load(f"{method}.model")


@pytest.mark.parametrize("method, metric", [("rgb_kmeans", "euclidean"), ("kmeans", "cosine")])
def test_val_predictions_store(evaluated: dict[str, Any], method: str, metric: str) -> None:
    catalog = evaluated["catalog"]
    preds, val = catalog.load(f"{method}.val_predictions"), catalog.load("prm_val_images")
    assert len(preds) == NUM_VAL
    assert preds.ids == val.ids and preds.shard_counts == val.shard_counts
    assert {k: (s.dtype, s.shape) for k, s in preds.fields.items()} == {"pred": ("uint8", (CROP, CROP))}
    assert preds.attrs["num_clusters"] == 8 and preds.attrs["metric"] == metric
    stacked = np.concatenate([s["pred"] for s in preds.iter_shards()])
    assert stacked.max() < 8 and len(np.unique(stacked)) > 1


@pytest.mark.parametrize("method", METHODS)
def test_scores_record(evaluated: dict[str, Any], method: str) -> None:
    catalog = evaluated["catalog"]
    record = evaluated["scored"][f"{method}.scores"]
    val, preds = catalog.load("prm_val_images"), catalog.load(f"{method}.val_predictions")
    assert record["method"] == method and record["num_clusters"] == 8
    assert 0 <= record["acc"] <= 100 and 0 <= record["miou"] <= 100
    assert record["class_names"] == CLASS_NAMES and len(record["iou"]) == 8
    assert sorted(record["mapping"]) == list(range(8))  # one-to-one: K clusters for K classes
    hist = np.asarray(record["confusion"])
    assert hist.shape == (8, 8)
    assert hist.sum() == labelled_pixels(val) == NUM_VAL * CROP * CROP  # synthetic: every pixel labelled
    # the same confusion again, straight from the two stores
    labels = np.concatenate([s["label"] for s in val.iter_shards(["label"])]).astype(np.int64).ravel()
    pred = np.concatenate([s["pred"] for s in preds.iter_shards()]).astype(np.int64).ravel()
    np.testing.assert_array_equal(hist, np.bincount(labels * 8 + pred, minlength=64).reshape(8, 8))
    assert record["acc"] == pytest.approx(100 * np.trace(matched_confusion(record)) / hist.sum())
    assert "majority_acc" not in record  # no over-clustering
    # the synthetic source's things and stuff, recorded in the prepared store, give the subset scores
    iou = np.array([np.nan if v is None else v for v in record["iou"]])
    groups = (("thing_classes", "miou_things", [5, 6, 7]), ("stuff_classes", "miou_stuff", [0, 1, 2, 3, 4]))
    for attr, key, ids in groups:
        assert val.attrs[attr] == ids
        expected = np.nanmean(iou[ids]) if not np.isnan(iou[ids]).all() else np.nan
        assert record[key] == pytest.approx(expected, nan_ok=True)


def test_comparison_table_and_metrics(evaluated: dict[str, Any]) -> None:
    reports, scored = evaluated["reports"], evaluated["scored"]
    table: pd.DataFrame = reports["rpt_comparison_table"]
    assert list(table["method"]) == list(METHODS)
    assert list(table.columns) == ["method", "num_clusters", "acc", "miou", "miou_things", "miou_stuff"]
    for method, row in table.set_index("method").iterrows():
        for key in ("acc", "miou"):  # rounded to 2 decimals
            assert row[key] == pytest.approx(scored[f"{method}.scores"][key], abs=0.005)
            assert row[key] == round(row[key], 2)
    markdown = reports["rpt_comparison_markdown"]
    assert markdown.splitlines()[0].replace(" ", "") == "|method|num_clusters|acc|miou|miou_things|miou_stuff|"
    assert [line.split("|")[1].strip() for line in markdown.splitlines()[2:]] == list(METHODS)

    assert reports["rpt_scores"] == {m: scored[f"{m}.scores"] for m in METHODS}  # what predict reads

    metrics = reports["evaluation_metrics"]
    assert all(m["step"] == 0 for m in metrics.values())
    for method in METHODS:
        record = scored[f"{method}.scores"]
        assert metrics[f"eval/{method}/acc"]["value"] == pytest.approx(record["acc"])
        assert metrics[f"eval/{method}/miou"]["value"] == pytest.approx(record["miou"])
        ious = {k for k in metrics if k.startswith(f"eval/{method}/iou/")}
        named = zip(CLASS_NAMES, record["iou"], strict=True)
        assert ious == {f"eval/{method}/iou/{n}" for n, v in named if v is not None}


def test_plots(evaluated: dict[str, Any]) -> None:
    reports = evaluated["reports"]
    confusions = reports["rpt_confusion_plots"]
    assert set(confusions) == {f"confusion_{m}.png" for m in METHODS}
    assert all(isinstance(f, Figure) for f in confusions.values())
    assert isinstance(reports["rpt_iou_bars"], Figure)
    overlay = reports["rpt_overlay_grid"]
    assert isinstance(overlay, Figure)
    assert len(overlay.axes) == OVERLAY_ROWS * (2 + len(METHODS))  # image | ground truth | each method
    assert [ax.get_title() for ax in overlay.axes[:2 + len(METHODS)]] == ["Image", "Ground truth", *METHODS]


def test_rerun_of_one_method_with_over_clustering(evaluated: dict[str, Any], make_catalog: Callable[..., DataCatalog],
                                                  run_pipeline: Callable[..., dict[str, Any]]) -> None:
    """`--from-nodes kmeans.fit` with 12 clusters: rgb_kmeans (predictions and scores) comes from the first run."""
    params = evaluated["params"]
    kmeans = {**params["evaluation"]["kmeans"], "num_clusters": 12}
    params = {**params, "evaluation": {**params["evaluation"], "kmeans": kmeans}}
    tmp = evaluated["tmp"]
    pipe = evaluation.create_pipeline().from_nodes("kmeans.fit")
    assert {n.name for n in pipe.nodes} == {"kmeans.fit", "kmeans.predict", "kmeans.score", "compare_methods",
                                            "plot_qualitative"}
    kept = {f"{m}.scores": evaluated["scored"][f"{m}.scores"] for m in METHODS if m != "kmeans"}
    catalog = make_catalog(tmp / "data", params, pipe, **kept)
    # the new kmeans predictions go elsewhere, the first run's stay for the other tests
    catalog["kmeans.val_predictions"] = ShardStoreDataset(str(tmp / "rerun/kmeans.val_predictions"), progress=False)
    before = catalog.load("rgb_kmeans.val_predictions").fingerprint
    record = run_pipeline(pipe.to_nodes("kmeans.score"), catalog)["kmeans.scores"]
    reports = run_pipeline(pipe.only_nodes("compare_methods", "plot_qualitative"), catalog)

    assert record["num_clusters"] == 12 and np.asarray(record["confusion"]).shape == (8, 12)
    assert sorted(record["mapping"]).count(-1) == 4  # Hungarian leaves 12 - 8 clusters unmatched
    assert np.asarray(record["confusion"]).sum() == NUM_VAL * CROP * CROP
    assert record["majority_acc"] >= record["acc"]  # many-to-one can only match more pixels
    assert 0 <= record["majority_miou"] <= 100
    assert catalog.load("kmeans.val_predictions").attrs["num_clusters"] == 12
    assert catalog.load("rgb_kmeans.val_predictions").fingerprint == before  # not recomputed

    table = reports["rpt_comparison_table"]
    assert list(table["method"]) == list(METHODS)
    assert list(table.columns) == ["method", "num_clusters", "acc", "miou", "miou_things", "miou_stuff",
                                   "majority_acc", "majority_miou"]
    assert list(table["num_clusters"]) == [8, 12, *[8] * (len(METHODS) - 2)]
    assert table.loc[0, ["majority_acc", "majority_miou"]].isna().all()  # rgb_kmeans did not over-cluster
    assert table.loc[1, "majority_acc"] == pytest.approx(record["majority_acc"], abs=0.005)
    assert "eval/kmeans/majority_miou" in reports["evaluation_metrics"]
    assert "eval/rgb_kmeans/majority_miou" not in reports["evaluation_metrics"]
    assert len(reports["rpt_overlay_grid"].axes) == OVERLAY_ROWS * (2 + len(METHODS))


def test_methods_that_did_not_run_are_left_out(evaluated: dict[str, Any], make_catalog: Callable[..., DataCatalog],
                                               run_pipeline: Callable[..., dict[str, Any]], tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """`--pipelines ingestion,features,evaluation`: no PiCIE / PriMaPs-EM predictions were ever saved (the catalog's
    `missing_ok` loads them as None), and one method's store belongs to other images: both get a record that says
    why, and the table holds the rest."""
    pipe = evaluation.create_pipeline().only_nodes(*(f"{m}.score" for m in LEARNED), "compare_methods",
                                                   "plot_qualitative")
    kept = {f"{m}.scores": evaluated["scored"][f"{m}.scores"] for m in FITTED}
    catalog = make_catalog(evaluated["tmp"] / "data", evaluated["params"], pipe, **kept)
    for method in LEARNED:
        catalog[f"{method}.val_predictions"] = ShardStoreDataset(str(tmp_path / method), missing_ok=True)
    stale = LEARNED[0]
    shutil.copytree(evaluated["tmp"] / "data" / "prm_train_images", tmp_path / stale)  # other ids than val
    with caplog.at_level("WARNING"):
        scored = run_pipeline(pipe.only_nodes(*(f"{m}.score" for m in LEARNED)), catalog)
    outputs = run_pipeline(pipe.only_nodes("compare_methods", "plot_qualitative"), catalog)
    assert all(set(scored[f"{m}.scores"]) == {"method", "skipped"} for m in LEARNED)
    assert list(outputs["rpt_comparison_table"]["method"]) == list(FITTED)
    assert list(outputs["rpt_scores"]) == list(FITTED)
    assert not any(key.startswith(f"eval/{stale}/") for key in outputs["evaluation_metrics"])
    assert len(outputs["rpt_overlay_grid"].axes) == OVERLAY_ROWS * (2 + len(FITTED))
    assert f"{stale}: the stored val predictions {tmp_path / stale} belong to other val images" in caplog.text
    assert f"{LEARNED[1]}: no val predictions (its pipeline has not run)" in caplog.text
