"""Run-level checks: every parameter and the tracking store checked before any work (unseg.params,
unseg.hooks.RunChecksHook), and a run stopped by Ctrl-C recorded KILLED in MLflow (unseg.hooks.TrackedSession)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import pytest
from kedro.config import OmegaConfigLoader
from kedro.framework.project import configure_project, settings
from kedro.framework.startup import bootstrap_project
from kedro.pipeline import Pipeline, node

import unseg.pipeline_registry
from unseg.hooks import check_tracking_store
from unseg.params import ParameterError, parameter_problems, validate_parameters
from unseg.settings import CONFIG_LOADER_ARGS

CONF = Path(__file__).resolve().parents[1] / "conf"
ENVS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "local")


def env_params(env: str) -> dict[str, Any]:
    """The merged parameters of `kedro run --env <env>` (base alone for "base")."""
    args = {**CONFIG_LOADER_ARGS, "default_run_env": "local" if env == "base" else env}
    return OmegaConfigLoader(str(CONF), **args)["parameters"]


@pytest.fixture(scope="module")
def base_params() -> dict[str, Any]:
    return env_params("base")


# ------------------------------------------------------------------------------------------- parameter schema
@pytest.mark.parametrize("env", ENVS)
def test_every_environment_passes_validation(env: str) -> None:
    assert {"base", "test", "cocostuff27", "cityscapes27", "potsdam3"} <= set(ENVS)
    validate_parameters(env_params(env))


def _set(params: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        params = params.setdefault(key, {})
    params[last] = value


def _drop(params: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        params = params[key]
    del params[last]


DELETE = object()


@pytest.mark.parametrize(("key", "value", "words"), [
    # a misspelt top-level block was never read: the run went on with the defaults
    ("datset.root", "/x", ["datset: unknown parameter", "did you mean dataset?", "valid keys at the top level",
                           "seed, device, dataset"]),
    # nested typos surfaced only when their node ran (after PiCIE training), or never (dataset.synthetic)
    ("primaps.em.epoch", 3, ["primaps.em.epoch: unknown parameter", "did you mean primaps.em.epochs?", "warmup_lr"]),
    ("dataset.synthetic.num_trian", 3, ["dataset.synthetic.num_trian", "num_train"]),
    ("primaps.base.primaps_emm", {}, ["primaps.base.primaps_emm: unknown", "primaps_em, picie_primaps_em"]),
    ("evaluation.kmeans.seed", 3, ["evaluation.kmeans.seed: unknown"]),  # the seed comes from `seed`
    ("predict.methd", "kmeans", ["predict.methd: unknown", "overlay_alpha"]),
    # values: seed=-1 failed only in PiCIE training, a string or a float lr was compared late or never
    ("seed", -1, ["seed: must be an integer in [0, 2147483647], got -1"]),
    ("seed", 2**31, ["seed: must be an integer in [0, 2147483647]"]),
    ("seed", True, ["seed: must be an integer"]),
    ("picie.train.lr", "fast", ["picie.train.lr: must be a number, got 'fast'"]),
    ("picie.train.epochs", 2.5, ["picie.train.epochs: must be an integer, got 2.5"]),
    ("primaps.em.monitor_val", "yes", ["primaps.em.monitor_val: must be true or false"]),
    ("picie.views.crop_scale", [0.5], ["picie.views.crop_scale: must be a list"]),
    ("evaluation.kmeans.metric", "l1", ["evaluation.kmeans", "'l1'", "cosine, euclidean"]),
    ("primaps.proposals.threshold", 2.0, ["primaps.proposals", "threshold must lie in (0, 1]"]),
    ("dataset.num_classes", 0, ["dataset: ", "dataset.num_classes is 0"]),
    ("features.backbone", "dino_vits9", ["features.backbone", "dino_vits8"]),
    ("device", "tpu", ["device", "'tpu'", "auto, cpu, cuda"]),
    ("primaps.base.primaps_em.init", "kmeans", ["primaps.base.primaps_em", "pca, centroids"]),
    ("ingestion.shard_size", DELETE, ["ingestion.shard_size: missing"]),
])
def test_unknown_missing_or_invalid_parameters_are_named(base_params: dict[str, Any], key: str, value: Any,
                                                         words: list[str]) -> None:
    params = copy.deepcopy(base_params)
    if value is DELETE:
        _drop(params, key)
    else:
        _set(params, key, value)
    problems = parameter_problems(params)
    assert len(problems) == 1, problems
    for word in words:
        assert word in problems[0], (word, problems[0])


def test_every_problem_is_reported_at_once(base_params: dict[str, Any], tmp_path: Path) -> None:
    params = copy.deepcopy(base_params)
    _set(params, "datset.root", "/x")
    _set(params, "seed", -1)
    _set(params, "features.weights", str(tmp_path / "missing.pth"))
    with pytest.raises(ParameterError, match="3 invalid parameter") as info:
        validate_parameters(params)
    assert [p.split(":")[0] for p in info.value.problems] == ["datset", "seed", "features.weights"]
    assert str(tmp_path / "missing.pth") in str(info.value)


# ------------------------------------------------------------------------------------------- at the run's start
def _session_run(project: Path, pipeline: str, **create: Any) -> None:
    bootstrap_project(project)
    configure_project("unseg")
    with settings.SESSION_CLASS.create(project_path=project, env="test", **create) as session:
        session.run(pipeline_names=[pipeline])


def test_a_misspelt_parameter_stops_the_run_before_any_work(project_copy: Path) -> None:
    """`kedro run --params datset.root=/x,datset.source=folder` ran the defaults with rc 0."""
    with pytest.raises(ParameterError, match=r"datset: unknown parameter \(did you mean dataset\?\)"):
        _session_run(project_copy, "ingestion", runtime_params={"datset": {"root": "/x", "source": "folder"}})
    assert not any((project_copy / "data").iterdir())  # nothing written
    assert not (project_copy / "mlflow.db").exists()  # the tracking store not even opened


def test_a_tracking_store_that_cannot_be_opened_stops_the_run_at_once(project_copy: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """MLFLOW_TRACKING_URI=sqlite:////proc/x.db: mlflow retried ~105 s, then "unable to open database file" without
    the URI."""
    uri = "sqlite:////proc/x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.monotonic()
    with pytest.raises(ValueError, match=f"MLflow tracking store '{uri}' cannot be used") as info:
        _session_run(project_copy, "ingestion")
    assert "unable to open database file" in str(info.value)
    assert time.monotonic() - start < 30
    assert not any((project_copy / "data").iterdir())


def _not_a_database(tmp_path: Path) -> str:
    (tmp_path / "notes.db").write_text("not a database " * 100)
    return f"sqlite:///{tmp_path / 'notes.db'}"


def _under_a_file(tmp_path: Path) -> str:
    (tmp_path / "file").write_text("")
    return f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}"


@pytest.mark.parametrize(("make_uri", "words"), [
    (lambda tmp: "sqlite:////proc/x.db", ["unable to open database file", "/proc/x.db"]),
    (_not_a_database, ["is not an sqlite database"]),
    (_under_a_file, ["cannot be created"]),
])
def test_check_tracking_store_names_the_uri(tmp_path: Path, make_uri: Callable[[Path], str],
                                            words: list[str]) -> None:
    uri = make_uri(tmp_path)
    with pytest.raises(ValueError) as info:
        check_tracking_store(uri, tmp_path)
    assert repr(uri) in str(info.value) and "MLFLOW_TRACKING_URI" in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_check_tracking_store_accepts_usable_stores(tmp_path: Path) -> None:
    check_tracking_store(f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}", tmp_path)  # created as mlflow does
    check_tracking_store("mlruns", tmp_path)
    check_tracking_store("http://127.0.0.1:5000", tmp_path)  # remote: left to mlflow
    assert (tmp_path / "new").is_dir() and (tmp_path / "mlruns").is_dir()


# --------------------------------------------------------------------------------------------------- Ctrl-C
def _stop(error: BaseException) -> Callable[[int], int]:
    def stop(seed: int) -> int:
        raise error

    return stop


def test_a_run_stopped_by_ctrl_c_is_recorded_killed(project_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kedro calls no hook for a KeyboardInterrupt: the run stayed open and MLflow's exit handler recorded it
    FINISHED. Through the project's session class, as `kedro run` runs it: KILLED; FAILED for SystemExit."""
    store = f"file://{project_copy / 'mlruns'}"  # the file store: no sqlite migrations (seconds) for two runs
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    tiny = {"ctrl_c": Pipeline([node(_stop(KeyboardInterrupt()), "params:seed", "out", name="stop")]),
            "exit": Pipeline([node(_stop(SystemExit(3)), "params:seed", "out", name="stop")])}
    monkeypatch.setattr(unseg.pipeline_registry, "register_pipelines", lambda: {**tiny, "__default__": tiny["exit"]})
    with pytest.raises(KeyboardInterrupt):
        _session_run(project_copy, "ctrl_c")
    assert mlflow.active_run() is None
    with pytest.raises(SystemExit):
        _session_run(project_copy, "exit")
    mlflow.set_tracking_uri(store)
    runs = mlflow.search_runs(experiment_names=["unseg"], output_format="list", order_by=["start_time ASC"])
    assert [(r.info.run_name.split()[0], r.info.status) for r in runs] == [("ctrl_c", "KILLED"), ("exit", "FAILED")]
    assert all(r.info.end_time is not None for r in runs)
