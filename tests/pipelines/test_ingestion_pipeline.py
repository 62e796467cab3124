"""The ingestion pipeline run by Kedro's SequentialRunner on a catalog built here (tiny synthetic and folder data)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog
from kedro.runner import SequentialRunner

from unseg.core.data import synthetic
from unseg.core.data.prepare import decode_workers
from unseg.core.data.sources import INDEX_COLUMNS, DatasetConfig, materialise_synthetic
from unseg.core.store import INGESTION, FieldSpec, Shard, ShardStore, write_store
from unseg.pipelines import evaluation, features
from unseg.pipelines.ingestion import create_pipeline
from unseg.pipelines.ingestion.nodes import prepare_images, report_ingestion

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
    assert pipe.inputs() == {"params:dataset", "params:seed", "params:ingestion.shard_size",
                             "params:ingestion.num_workers"}
    assert pipe.outputs() == {"ingestion_metrics"}


def test_decode_workers_default_and_resolution(pipeline_params: Callable[..., dict[str, Any]],
                                               synthetic_run: dict[str, Any]) -> None:
    """conf/base asks for `auto` workers; the node turns it into a count, and the count changes no store."""
    assert pipeline_params(synthetic_run["tmp"] / "raw")["ingestion"]["num_workers"] == "auto"
    params = synthetic_run["catalog"].load("params:dataset")
    index = synthetic_run["indexed"]["int_image_index"]
    streams = {n: prepare_images(index, params, 0, SHARD, n) for n in ("auto", 0, 2)}
    assert [s.num_workers for s in streams["auto"]] == [decode_workers("auto")] * 2
    assert [s.num_workers for s in streams[2]] == [2, 2]
    for role, made in zip(("train", "val"), zip(*streams.values(), strict=True), strict=True):
        assert len({s.fingerprint for s in made}) == 1 and len({s.attrs[INGESTION] for s in made}) == 1
        stored = synthetic_run["catalog"].load(f"prm_{role}_images")  # written with `auto` workers
        assert made[0].fingerprint == stored.fingerprint
        for n, stream in zip((0, 2), made[1:], strict=True):
            write_store(stream, synthetic_run["tmp"] / f"{role}_{n}", progress=False)
            again = ShardStore(synthetic_run["tmp"] / f"{role}_{n}")
            assert again.ids == stored.ids and again.shard_counts == stored.shard_counts
            for k in range(stored.num_shards):
                for name, array in stored.shard(k).items():
                    assert again.shard(k)[name].tobytes() == array.tobytes()


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


# -------------------------------------------------------------------------------- a split emptied by skipping bad files
def test_every_val_image_skipped_stops_ingestion_naming_the_split(tmp_path: Path,
                                                                   make_catalog: Callable[..., DataCatalog]) -> None:
    """Every val image reads its header but not its pixels: the index keeps them, preparation skips them all. The
    run stops there, naming the split and the count, instead of passing 0 val images on to features and evaluation."""
    root = tmp_path / "raw"
    folder_dataset(root, "truncated")
    for path in (root / "images/val").iterdir():
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    catalog = make_catalog(tmp_path / "data", root, source="folder", on_bad_file="skip")
    with pytest.raises(Exception, match=rf"empty val split: all {NUM_VAL + 1} images were skipped as bad") as info:
        SequentialRunner().run(create_pipeline(), catalog)
    assert str(root / "images/val") in str(info.value)
    assert not (tmp_path / "data/prm_val_images/meta.json").exists()


class _Split:
    """A stream of one shard holding `count` images (0: all skipped, what a resumed write of an all-bad split can
    finish with)."""

    fields = {"image": FieldSpec("uint8", (2, 2, 3))}
    num_shards = 1
    fingerprint = "stub"

    def __init__(self, split: str, count: int) -> None:
        self.attrs, self.count = {"split": split}, count

    def iter_shards(self, todo: list[int]) -> Iterator[Shard]:
        skipped = [] if self.count else [{"id": "v", "path": "/x/v.png", "problem": "corrupt"}]
        yield from (Shard(i, [f"{n}" for n in range(self.count)],
                          {"image": np.zeros((self.count, 2, 2, 3), np.uint8)}, skipped) for i in todo)


def test_report_refuses_an_empty_store(tmp_path: Path) -> None:
    for split, count in (("train", 2), ("val", 0)):
        write_store(_Split(split, count), tmp_path / split, progress=False)
    index = pd.DataFrame({"split": ["train", "train", "val"]})
    with pytest.raises(ValueError, match="empty val split .*all 1 images were skipped as bad"):
        report_ingestion(index, [], ShardStore(tmp_path / "train"), ShardStore(tmp_path / "val"))


# ------------------------------------------------------------------------------- the same image ids in train and val
def test_splits_numbered_from_one_run_end_to_end(tmp_path: Path, pipeline_params: Callable[..., dict[str, Any]],
                                                 pipeline_catalog: Callable[..., DataCatalog],
                                                 run_pipeline: Callable[..., dict[str, Any]]) -> None:
    """Train and val both hold 0001.png, 0002.png, ...: ingestion, features, k-means and the linear probe (fit on
    train, predict and score val) run, and score exactly as the same images under ids unique across the splits."""
    synthetic_root = tmp_path / "synthetic"
    materialise_synthetic(DatasetConfig("synthetic", str(synthetic_root), num_classes=8, synthetic={
        "num_train": 4, "num_val": 3, "height": HEIGHT, "width": WIDTH}))
    stores = ("prm_train_images", "prm_val_images", "feat_train", "feat_val", "kmeans.val_predictions",
              "linear_probe.val_predictions")
    pipe = (create_pipeline() + features.create_pipeline() + evaluation.create_pipeline()).only_nodes(
        *[n.name for n in create_pipeline().nodes], "extract_features",
        *(f"{m}.{step}" for m in ("kmeans", "linear_probe") for step in ("fit", "predict", "score")))
    scores = {}
    for naming in ("shared", "unique"):
        root = tmp_path / naming
        for kind in ("images", "labels"):
            for split in ("train", "val"):
                for n, path in enumerate(sorted((synthetic_root / kind / split).iterdir()), start=1):
                    stem = f"{n:04d}" if naming == "shared" else f"{split}{n:04d}"
                    (root / kind / split).mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, root / kind / split / f"{stem}.png")
        params = pipeline_params(root, crop=CROP, shard_size=SHARD, feature_batch_size=4, source="folder")
        params["evaluation"]["kmeans"].update(num_iters=5, sample_size=2000)
        params["evaluation"]["linear_probe"].update(epochs=1)
        catalog = pipeline_catalog(tmp_path / f"data_{naming}", params, stores, empty={
            name for name in pipe.datasets() if name not in stores and not name.startswith("params:")})
        torch.manual_seed(0)  # the random backbone weights: the same in both runs
        run_pipeline(pipe, catalog, load=False)
        val = catalog.load("prm_val_images")
        if naming == "shared":
            assert catalog.load("prm_train_images").ids == ["0001", "0002", "0003", "0004"]
            assert val.ids == ["0001", "0002", "0003"]
        for method in ("kmeans", "linear_probe"):
            assert catalog.load(f"{method}.val_predictions").ids == val.ids
        scores[naming] = {m: catalog.load(f"{m}.scores") for m in ("kmeans", "linear_probe")}
    for method in ("kmeans", "linear_probe"):
        shared, unique = scores["shared"][method], scores["unique"][method]
        assert shared["confusion"] == unique["confusion"] and shared["miou"] == unique["miou"]
