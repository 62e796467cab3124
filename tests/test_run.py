"""End to end: `__default__` through KedroSession in the `test` environment, MLflow in a temporary store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from kedro.framework.project import configure_project, pipelines
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from PIL import Image

from unseg.core.data.sources import DatasetConfig, materialise_synthetic
from unseg.core.store import ShardStore
from unseg.pipeline_registry import ON_DEMAND

pytestmark = pytest.mark.integration


def _run(project: Path, pipeline: str = "__default__", **kwargs: object) -> None:
    bootstrap_project(project)
    configure_project("unseg")
    with KedroSession.create(project_path=project, env="test", **kwargs) as session:  # type: ignore[arg-type]
        session.run(pipeline_name=pipeline)


def test_default_pipeline_chains_every_registered_pipeline() -> None:
    configure_project("unseg")
    default = pipelines["__default__"]
    for name, pipe in pipelines.items():
        if name in ON_DEMAND:  # predict needs a folder of the user's images
            assert not set(pipe.nodes) & set(default.nodes)
        else:
            assert set(pipe.nodes) <= set(default.nodes), f"pipeline {name} is not part of __default__"


@pytest.mark.parametrize("name", ["ingestion", "features", "picie", "primaps", "picie_primaps", "evaluation",
                                  "comparison", "predict", "__default__"])
def test_every_pipeline_loads_when_asked_for_alone(name: str) -> None:
    """`kedro run --pipelines NAME` asks the registry for NAME alone (Kedro 1.x loads pipelines lazily); every name,
    including `picie_primaps`, which has no folder of its own, must load (it failed with an ImportError)."""
    configure_project("unseg")
    pipelines.set_requested([name])
    try:
        assert len(pipelines[name].nodes) > 0
    finally:
        pipelines.set_requested(None)


def test_folder_source_with_bad_file_skipped(project_copy: Path) -> None:
    """`kedro run --params dataset.source=folder,...` over a tree with one corrupt image, with on_bad_file=skip: the
    chain from the folder through the evaluation of the methods that need no training (the trained ones read the
    same stores; the default run covers them)."""
    root = project_copy / "data/01_raw/folder_test"
    materialise_synthetic(DatasetConfig("synthetic", str(root), num_classes=8,
                                        synthetic={"num_train": 24, "num_val": 8, "height": 64, "width": 80}))
    (root / "images/val/broken.png").write_bytes(b"not a png")
    (root / "labels/val/broken.png").write_bytes(b"not a png")
    # the command line a user types, in its own process
    params = f"dataset.source=folder,dataset.root={root},dataset.on_bad_file=skip"
    subprocess.run([sys.executable, "-m", "kedro", "run", "--env", "test", "--pipelines",
                    "ingestion,features,evaluation", "--params", params], cwd=project_copy, check=True,
                   capture_output=True)
    mlflow.set_tracking_uri(f"sqlite:///{project_copy / 'mlflow.db'}")

    runs = mlflow.search_runs(experiment_names=["unseg"], output_format="list", order_by=["start_time DESC"])
    metrics = runs[0].data.metrics
    assert metrics["ingestion/skipped_files"] == 1
    assert metrics["ingestion/val/images"] == 8
    assert "eval/kmeans/miou" in metrics


def test_features_with_a_local_dino_checkpoint(project_copy: Path) -> None:
    """`kedro run --pipelines ingestion,features --params "features.backbone=dino_vits8,features.weights=<file>"`:
    a released-DINO-style state dict (random values) read from a local file, no hub."""
    from unseg.core.backbones import create_backbone
    from unseg.core.features import weights_id

    path = project_copy / "dino_deitsmall8_pretrain.pth"
    torch.save(create_backbone("dino_vits8", pretrained=False).body.model.state_dict(), path)
    params = f"features.backbone=dino_vits8,features.weights={path}"
    done = subprocess.run([sys.executable, "-m", "kedro", "run", "--env", "test", "--pipelines", "ingestion,features",
                           "--params", params], cwd=project_copy, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for split, count in (("train", 24), ("val", 8)):
        store = ShardStore(next((project_copy / f"data/04_feature/feat_{split}").glob("*/*/meta.json")).parent)
        assert len(store) == count and store.fields["feat"].shape == (384, 8, 8)  # 64 px crop, patch 8
        assert store.attrs["backbone"] == "dino_vits8" and store.attrs["weights"] == weights_id(path, True)


def _stores(project: Path, dataset: str) -> list[str]:
    """The content-addressed stores of a versioned store dataset."""
    pool = project / "data" / dataset / ".stores"
    return sorted(p.name for p in pool.iterdir() if not p.name.startswith(".")) if pool.is_dir() else []


def _versions(project: Path, dataset: str) -> int:
    return sum(1 for p in (project / "data" / dataset).iterdir() if not p.name.startswith("."))


def test_a_repeated_run_reuses_its_stores_and_a_changed_file_is_recomputed(project_copy: Path) -> None:
    """Ingestion and features run twice: the second run computes no store (each dataset gains a version record that
    names the same stored data). Then one train image gets new content under the same path: the train images and
    train features are made again, the val ones are reused."""
    datasets = ("03_primary/train_images", "03_primary/val_images", "04_feature/feat_train", "04_feature/feat_val")
    for _ in range(2):
        _run(project_copy, "ingestion")
        _run(project_copy, "features")
    first = {name: _stores(project_copy, name) for name in datasets}
    assert all(len(stores) == 1 for stores in first.values()), first
    assert all(_versions(project_copy, name) == 2 for name in datasets)

    image = sorted((project_copy / "data/01_raw/synthetic_test/images").glob("*train*/*.png"))[0]
    pixels = np.asarray(Image.open(image))
    Image.fromarray(255 - pixels).save(image)
    _run(project_copy, "ingestion")
    _run(project_copy, "features")
    for name in datasets:
        stores = _stores(project_copy, name)
        assert len(stores) == (2 if "train" in name else 1) and set(first[name]) <= set(stores), (name, stores)
    latest = ShardStore(max((project_copy / "data/03_primary/train_images").glob("2*/train_images")))
    position = latest.ids.index(image.stem) if image.stem in latest.ids else 0
    assert not np.array_equal(latest.item(position)["image"],
                              ShardStore(project_copy / "data/03_primary/train_images/.stores" / first[
                                  "03_primary/train_images"][0]).item(position)["image"])
