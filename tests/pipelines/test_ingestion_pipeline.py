"""The ingestion pipeline run by Kedro's SequentialRunner on a catalog built here (tiny synthetic and folder data)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog
from kedro.runner import SequentialRunner

from unseg.core.data import synthetic
from unseg.core.data.sources import INDEX_COLUMNS, DatasetConfig, materialise_synthetic
from unseg.pipelines.ingestion import create_pipeline

STORES = ("prm_train_images", "prm_val_images")
MEMORY = ("int_image_index", "int_index_skipped", "ingestion_metrics")
NUM_TRAIN, NUM_VAL, HEIGHT, WIDTH, CROP, SHARD = 12, 6, 48, 64, 32, 4


@pytest.fixture(scope="module")
def make_catalog(pipeline_params: Callable[..., dict[str, Any]],
                 pipeline_catalog: Callable[..., DataCatalog]) -> Callable[..., DataCatalog]:
    """`make_catalog(data, root, **dataset)`: the stores under `data`, the parameters shrunk further (12 + 6 images
    of 48x64 under `root`, resized to 48, cropped to 32; `dataset` overrides more)."""

    def make(data: Path, root: Path, **dataset: Any) -> DataCatalog:
        params = pipeline_params(root, crop=CROP, num_train=NUM_TRAIN, num_val=NUM_VAL, height=HEIGHT, width=WIDTH,
                                 shard_size=SHARD, **dataset)
        return pipeline_catalog(data, params, STORES, empty=MEMORY)

    return make


def metric_values(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    assert all(m["step"] == 0 for m in metrics.values())
    return {name: m["value"] for name, m in metrics.items()}


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory, make_catalog: Callable[..., DataCatalog],
                  run_pipeline: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """Index alone first (to look at the index table), then the rest of ingestion from the prepared index."""
    tmp = tmp_path_factory.mktemp("ingestion")
    catalog = make_catalog(tmp / "data", tmp / "raw")
    pipe = create_pipeline()
    indexed = run_pipeline(pipe.to_nodes("build_image_index"), catalog)
    prepared = run_pipeline(pipe.from_nodes("prepare_images"), catalog)
    return {"tmp": tmp, "catalog": catalog, "indexed": indexed, "prepared": prepared}


def test_pipeline_nodes_and_free_inputs() -> None:
    pipe = create_pipeline()
    assert [n.name for n in pipe.nodes] == ["build_image_index", "prepare_images", "report_ingestion"]
    assert pipe.inputs() == {"params:dataset", "params:seed", "params:ingestion.shard_size"}
    assert pipe.outputs() == {"ingestion_metrics"}


def test_index_table_has_one_row_per_image_per_split(synthetic_run: dict[str, Any]) -> None:
    indexed = synthetic_run["indexed"]
    assert set(indexed) == {"int_image_index", "int_index_skipped"}
    table: pd.DataFrame = indexed["int_image_index"]
    assert tuple(table.columns) == INDEX_COLUMNS
    assert table["split"].value_counts().to_dict() == {"train": NUM_TRAIN, "val": NUM_VAL}
    assert table["image_id"].is_unique
    assert (table["width"] == WIDTH).all() and (table["height"] == HEIGHT).all()
    assert (table["label_path"] != "").all()
    assert all(Path(p).is_file() and Path(p).is_relative_to(synthetic_run["tmp"] / "raw")
               for p in table["image_path"])
    assert indexed["int_index_skipped"] == []


@pytest.mark.parametrize("name, role, count, shard_counts", [
    ("prm_train_images", "train", NUM_TRAIN, [4, 4, 4]),
    ("prm_val_images", "val", NUM_VAL, [4, 2]),
])
def test_prepared_stores(synthetic_run: dict[str, Any], name: str, role: str, count: int,
                         shard_counts: list[int]) -> None:
    store = synthetic_run["catalog"].load(name)
    table = synthetic_run["indexed"]["int_image_index"]
    assert len(store) == count
    assert store.ids == table.loc[table["split"] == role, "image_id"].tolist()
    assert store.shard_counts == shard_counts
    assert {k: (s.dtype, s.shape) for k, s in store.fields.items()} == {
        "image": ("uint8", (CROP, CROP, 3)), "label": ("uint8", (CROP, CROP))}
    assert store.attrs["split"] == role and store.attrs["crop"] == CROP and store.attrs["num_classes"] == 8
    # the synthetic source's own classes, for evaluation downstream
    assert store.attrs["class_names"] == list(synthetic.CLASS_NAMES)
    assert store.attrs["thing_classes"] == list(synthetic.THING_CLASSES)
    assert store.attrs["stuff_classes"] == list(synthetic.STUFF_CLASSES)
    assert store.skipped == []
    labels = np.concatenate([s["label"] for s in store.iter_shards(["label"])])
    assert labels.shape == (count, CROP, CROP) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= set(range(8))
    assert len(np.unique(labels)) > 1  # real scenes, not a constant fill


def test_ingestion_metrics_count_images_and_skips(synthetic_run: dict[str, Any]) -> None:
    assert set(synthetic_run["prepared"]) == {"ingestion_metrics"}
    assert metric_values(synthetic_run["prepared"]["ingestion_metrics"]) == {
        "ingestion/skipped_files": 0.0,
        "ingestion/train/images": float(NUM_TRAIN), "ingestion/train/indexed": float(NUM_TRAIN),
        "ingestion/val/images": float(NUM_VAL), "ingestion/val/indexed": float(NUM_VAL),
    }


# ------------------------------------------------------------------------------------------- folder with bad files
def folder_dataset(root: Path, corruption: str) -> Path:
    """The synthetic set in the folder layout plus one bad val image `broken.png` (with a valid label).

    garbage: not an image at all (fails when indexed, from its header);
    truncated: a valid header with half the pixel data (indexed fine, fails when decoded for preparation).
    """
    materialise_synthetic(DatasetConfig("synthetic", str(root), num_classes=8, synthetic={
        "num_train": 4, "num_val": NUM_VAL, "height": HEIGHT, "width": WIDTH}))
    first = sorted((root / "images/val").iterdir())[0]
    shutil.copy(root / "labels/val" / first.name, root / "labels/val/broken.png")
    data = first.read_bytes()
    (root / "images/val/broken.png").write_bytes(b"not a png" if corruption == "garbage" else data[:len(data) // 2])
    return root / "images/val/broken.png"


@pytest.mark.parametrize("corruption", ["garbage", "truncated"])
def test_bad_val_image_with_on_bad_file_raise_names_the_file(tmp_path: Path, corruption: str,
                                                             make_catalog: Callable[..., DataCatalog]) -> None:
    bad = folder_dataset(tmp_path / "raw", corruption)
    catalog = make_catalog(tmp_path / "data", tmp_path / "raw", source="folder", on_bad_file="raise")
    with pytest.raises(Exception, match="broken.png") as info:
        SequentialRunner().run(create_pipeline(), catalog)
    assert str(bad) in str(info.value)
    assert not (tmp_path / "data/prm_val_images/meta.json").exists()


@pytest.mark.parametrize("corruption, index_skips, prepare_skips", [("garbage", 1, 0), ("truncated", 0, 1)])
def test_bad_val_image_with_on_bad_file_skip_is_counted(tmp_path: Path, corruption: str, index_skips: int,
                                                        prepare_skips: int, make_catalog: Callable[..., DataCatalog],
                                                        run_pipeline: Callable[..., dict[str, Any]]) -> None:
    bad = folder_dataset(tmp_path / "raw", corruption)
    catalog = make_catalog(tmp_path / "data", tmp_path / "raw", source="folder", on_bad_file="skip")
    pipe = create_pipeline()
    skipped = run_pipeline(pipe.to_nodes("build_image_index"), catalog)["int_index_skipped"]
    outputs = run_pipeline(pipe.from_nodes("prepare_images"), catalog)

    assert [s["path"] for s in skipped] == [str(bad)] * index_skips
    val = catalog.load("prm_val_images")
    assert [s["path"] for s in val.skipped] == [str(bad)] * prepare_skips
    assert len(val) == NUM_VAL and "broken" not in val.ids
    # "broken" sorts first; skipped at preparation it leaves its shard one short
    assert val.shard_counts == ([4, 2] if corruption == "garbage" else [3, 3])
    metrics = metric_values(outputs["ingestion_metrics"])
    assert metrics["ingestion/skipped_files"] == 1.0
    assert metrics["ingestion/val/images"] == float(NUM_VAL)
    assert metrics["ingestion/val/indexed"] == float(NUM_VAL + prepare_skips)
    assert metrics["ingestion/train/images"] == metrics["ingestion/train/indexed"] == 4.0
