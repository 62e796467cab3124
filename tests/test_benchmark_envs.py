"""`ingestion` in each benchmark environment (conf/cocostuff27, conf/cityscapes27, conf/potsdam3) on miniatures of
the official layouts, through KedroSession as `kedro run --env <env> --pipelines ingestion --params dataset.root=...`
runs it (the command line's own --params parsing is covered by tests/test_run.py), MLflow in a temporary store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
from benchmark_trees import make_cityscapes, make_cocostuff, make_potsdam
from kedro.config import OmegaConfigLoader
from kedro.framework.project import configure_project
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.io import DataCatalog

from unseg.core.data import cityscapes, cocostuff, potsdam
from unseg.core.data.prepare import resize_crop
from unseg.core.picie import ClusterConfig, EvalConfig, LossConfig, NetworkConfig, TrainConfig, ViewConfig
from unseg.core.primaps import EMConfig
from unseg.core.store import ShardStore
from unseg.datasets import OnlineStoreDataset, ShardStoreDataset
from unseg.pipelines.primaps.nodes import NODE_KEYS
from unseg.settings import CONFIG_LOADER_ARGS

pytestmark = pytest.mark.integration

CROP = 320  # the environments' resolution


def coco_expected(raw: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda v: 255 if v == 255 else cocostuff.FINE_TO_COARSE[int(v)])(raw)


def city_expected(raw: np.ndarray) -> np.ndarray:
    return np.where(raw >= 7, raw.astype(np.int64) - 7, 255)


def potsdam_expected(raw: np.ndarray) -> np.ndarray:
    return np.array([0, 1, 2, 2, 0, 1])[raw]


# env -> (miniature builder, class names, expected class ids of raw ids)
ENVS: dict[str, tuple[Callable, tuple[str, ...], Callable[[np.ndarray], np.ndarray]]] = {
    "cocostuff27": (make_cocostuff, cocostuff.CLASS_NAMES, coco_expected),
    "cityscapes27": (make_cityscapes, cityscapes.CLASS_NAMES, city_expected),
    "potsdam3": (make_potsdam, potsdam.CLASS_NAMES, potsdam_expected),
}


@pytest.fixture
def ends_mlflow_runs() -> Iterator[None]:
    """An in-process KedroSession leaves its MLflow run active; end it so that a later session starts its own."""
    yield
    while mlflow.active_run():
        mlflow.end_run()


def latest_run() -> mlflow.entities.Run:
    return mlflow.search_runs(experiment_names=["unseg"], output_format="list", order_by=["start_time DESC"])[0]


def latest_store(project: Path, split: str) -> ShardStore:
    """The newest version of a prepared store (versions are timestamps)."""
    return ShardStore(sorted((project / "data/03_primary" / f"{split}_images").glob(f"*/{split}_images"))[-1])


def run_ingestion(project: Path, env: str) -> None:
    """`kedro run --env <env> --pipelines ingestion --params dataset.root=<miniature>` in this process, then checks
    the MLflow run and the prepared stores."""
    make, names, expected = ENVS[env]
    root, raw = make(project / "mini" / env)
    params: dict = {"dataset": {"root": str(root)}}
    if env == "cityscapes27":  # a city folder without images, skipped and counted
        (root / "leftImg8bit" / "train" / "cologne").mkdir()
        params["dataset"]["on_bad_file"] = "skip"
    with KedroSession.create(project_path=project, env=env, runtime_params=params) as session:
        session.run(pipeline_names=["ingestion"])
    while mlflow.active_run():
        mlflow.end_run()

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    run = latest_run()
    metrics = run.data.metrics
    assert metrics["ingestion/train/images"] == 3 and metrics["ingestion/val/images"] == 2
    assert metrics["ingestion/skipped_files"] == (1 if env == "cityscapes27" else 0)
    assert run.data.params["dataset.source"] == env and run.data.params["dataset.root"] == str(root)
    assert run.data.params["dataset.crop"] == str(CROP)

    val = latest_store(project, "val")
    assert val.attrs["class_names"] == list(names) and val.attrs["crop"] == CROP
    assert val.attrs["thing_classes"] == (list(range(12)) if env == "cocostuff27" else [])
    for shard in range(val.num_shards):
        arrays = val.shard(shard)
        for n, image_id in enumerate(val.shard_ids(shard)):
            want = resize_crop(expected(raw[image_id]), CROP, CROP, nearest=True)
            np.testing.assert_array_equal(arrays["label"][n], want, err_msg=f"{env} {image_id}")
    assert len(latest_store(project, "train")) == 3


def test_ingestion_in_every_benchmark_env(project_copy: Path, ends_mlflow_runs: None) -> None:
    """The three environments one after the other in one project (one MLflow store: its set-up is the slow part)."""
    bootstrap_project(project_copy)
    configure_project("unseg")
    for env in ENVS:
        run_ingestion(project_copy, env)
    runs = mlflow.search_runs(experiment_names=["unseg"], output_format="list")
    assert sorted(r.data.params["dataset.source"] for r in runs) == sorted(ENVS)


@pytest.mark.parametrize("env", list(ENVS))
def test_benchmark_env_parameters(env: str) -> None:
    """Each environment sets the data set, the backbone and the papers' PiCIE / PriMaPs-EM settings, nothing else."""
    conf = Path(__file__).resolve().parents[1] / "conf"
    own = OmegaConfigLoader(str(conf), **{**CONFIG_LOADER_ARGS, "base_env": env, "default_run_env": env})
    assert set(own["parameters"]) == {"dataset", "features", "picie", "primaps"}
    params = OmegaConfigLoader(str(conf), **{**CONFIG_LOADER_ARGS, "default_run_env": env})["parameters"]
    assert params["dataset"]["source"] == env and params["features"]["backbone"] == "dino_vits8"
    assert params["dataset"]["num_classes"] == len(ENVS[env][1])
    assert (params["dataset"]["resize"], params["dataset"]["crop"]) == (CROP, CROP)
    assert params["ingestion"] == OmegaConfigLoader(str(conf), **CONFIG_LOADER_ARGS)["parameters"]["ingestion"]
    picie, em = params["picie"], params["primaps"]["em"]
    assert picie["network"]["arch"] == "resnet18" and picie["views"]["input_size"] == CROP
    assert (picie["train"]["epochs"], picie["train"]["batch_size"]) == (10, 128)
    assert picie["train"]["lr"] == {"cocostuff27": 1e-4, "cityscapes27": 1e-3, "potsdam3": 1e-3}[env]
    assert picie["views"]["grayscale_p"] == 0.2  # soft merge: the base keys the environment does not set stay
    assert params["primaps"]["augment"] is True and params["primaps"]["proposals"]["threshold"] == 0.4
    assert (em["epochs"], em["batch_size"], em["lr"], em["warmup_epochs"]) == (50, 32, 0.005, 2)
    assert (em["ema_every"], em["ema_max_decay"], em["focal_gamma"]) == (10, 0.98, 2)
    # every block builds its config (the checks a run does first)
    k = params["dataset"]["num_classes"]
    NetworkConfig(**picie["network"]), ViewConfig(**picie["views"]), LossConfig(**picie["loss"])
    TrainConfig(**picie["train"])
    ClusterConfig(**{**picie["clustering"], "num_clusters": k}), EvalConfig(**{**picie["eval"], "num_clusters": k})
    EMConfig(**{**{key: v for key, v in em.items() if key not in NODE_KEYS}, "num_prototypes": k}, init="pca")



ONLINE = ("feat_train", "feat_picie_train")  # computed where they are read in the large environments (issue 13)


@pytest.mark.parametrize("env", list(ENVS))
def test_benchmark_env_catalog(env: str) -> None:
    """COCO-Stuff-27 and Cityscapes-27 compute the train features where they are read (an environment's catalog entry
    replaces base's, and a named entry wins over base's "feat_{split}" factory); everything else is base's."""
    conf = Path(__file__).resolve().parents[1] / "conf"
    base = OmegaConfigLoader(str(conf), **CONFIG_LOADER_ARGS)["catalog"]
    merged = OmegaConfigLoader(str(conf), **{**CONFIG_LOADER_ARGS, "default_run_env": env})["catalog"]
    online = ONLINE if env in ("cocostuff27", "cityscapes27") else ()
    assert set(merged) == set(base) | set(online)
    assert {name: merged[name] for name in base} == base
    catalog = DataCatalog.from_config(merged)
    for name in (*ONLINE, "feat_val", "feat_picie_val"):
        expected = OnlineStoreDataset if name in online else ShardStoreDataset
        assert type(catalog.get(name)) is expected, (env, name)
