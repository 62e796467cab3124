"""The test environment's whole chain, end to end: `python -m unseg run --env test` once (the module's `default_chain`,
the CLI path), read by the tests of its outputs (scores above plausibility floors, MLflow records, predict reproducing
the evaluation) and compared with the same chain under `torchrun --nproc-per-node=2 -m unseg run` (gloo on the CPU):
a rank killed mid-run ends the run with an error that names it (no hang), the rerun resumes and completes, every run
is one MLflow run, and the outputs are those of one process: the same stores byte for byte, the same comparison
table. (README command 2 runs the tests with `--dist loadfile`: a module's tests share its fixtures in one worker.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from kedro.framework.project import configure_project
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from PIL import Image
from projects import copy_project, run_environment

from unseg.core.store import ShardStore
from unseg.pipelines.evaluation.pipeline import METHODS

pytestmark = pytest.mark.integration

STORES = ("data/03_primary/train_images", "data/04_feature/feat_train", "data/04_feature/feat_val",
          "data/05_model_input/primaps_train_masks", "data/07_model_output/kmeans_val_predictions",
          "data/07_model_output/picie_val_predictions")
TIMEOUT_S = 600


def command(processes: int) -> list[str]:
    """`python -m unseg run --env test`, under torchrun with `processes` > 1."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] if processes > 1 else []
    return [sys.executable, *launcher, "-m", "unseg", "run", "--env", "test"]


def runs(project: Path) -> list[mlflow.entities.Run]:
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["unseg"], output_format="list", order_by=["start_time ASC"])


def latest_store(project: Path, folder: str) -> ShardStore:
    return ShardStore(max((project / folder).glob("*/*/meta.json")).parent)


def rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of the worker process of `rank` among the children of a torchrun process (Linux /proc)."""
    children = subprocess.run(["pgrep", "-P", str(launcher)], capture_output=True, text=True).stdout.split()
    for pid in children:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


def kill_rank_after(project: Path, marker: str, rank: int) -> subprocess.CompletedProcess[str]:
    """Starts the 2-process run, kills `rank` (SIGKILL) once `marker` (a glob under the project) exists."""
    log = project / "killed_run.log"  # a file, not a pipe: nobody reads a pipe while the run writes
    with log.open("w") as out:
        process = subprocess.Popen(command(2), cwd=project, env=run_environment(project), stdout=out,
                                   stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + TIMEOUT_S
        while not list(project.glob(marker)):
            assert process.poll() is None, f"the run ended before {marker} appeared: {log.read_text()[-3000:]}"
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"{marker} did not appear in {TIMEOUT_S} s")
            time.sleep(0.2)
        pid = rank_pid(process.pid, rank)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        process.wait(timeout=TIMEOUT_S)  # torchrun stops the other rank: no hang
    return subprocess.CompletedProcess(process.args, process.returncode, log.read_text(), "")


@pytest.fixture(scope="module")
def default_chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project where `python -m unseg run --env test` (the whole chain, one process) has run once. Tests may add runs
    (predict) but never change what the chain wrote."""
    project = copy_project(tmp_path_factory.mktemp("default_chain"))
    done = subprocess.run(command(1), cwd=project, env=run_environment(project), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return project


def _run(project: Path, pipeline: str, **kwargs: object) -> None:
    bootstrap_project(project)
    configure_project("unseg")
    with KedroSession.create(project_path=project, env="test", **kwargs) as session:  # type: ignore[arg-type]
        session.run(pipeline_name=pipeline)


def test_default_run_tracks_metrics_table_and_plots(default_chain: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project_copy = default_chain
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project_copy / 'mlflow.db'}")
    monkeypatch.chdir(project_copy)

    table = pd.read_csv(next((project_copy / "data/08_reporting/comparison_table.csv").glob("*/comparison_table.csv")))
    assert list(table["method"]) == list(METHODS)
    assert {"rgb_kmeans", "kmeans", "linear_probe"} <= set(METHODS)
    assert table[["acc", "miou"]].apply(lambda col: col.between(0, 100)).all().all()
    # plausibility floors, each far below what is measured (tests/test_run.py's env, seed 0; see docs/testing.md)
    scores = table.set_index("method")
    floor = scores.loc["rgb_kmeans"]
    for method in METHODS:
        if method != "rgb_kmeans":  # every method that learns from features beats k-means on raw colours
            assert scores.loc[method, "acc"] > floor["acc"] + 5, (method, scores.loc[method, "acc"], floor["acc"])
    for method in ("kmeans", "primaps_em", "primaps_em_crf", "primaps_em_student", "linear_probe"):
        assert scores.loc[method, "miou"] > floor["miou"] + 8, (method, scores.loc[method, "miou"], floor["miou"])

    mlflow.set_tracking_uri(f"sqlite:///{project_copy / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["unseg"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    metrics = run.data.metrics
    for method in METHODS:
        assert 0 <= metrics[f"eval/{method}/miou"] <= 100
        assert metrics[f"eval/{method}/acc"] == pytest.approx(float(table.set_index("method").loc[method, "acc"]),
                                                              abs=0.01)
        assert any(key.startswith(f"eval/{method}/iou/") for key in metrics)
        assert 0 <= metrics[f"eval/{method}/miou_things"] <= 100  # the synthetic source defines things/stuff
        assert 0 <= metrics[f"eval/{method}/miou_stuff"] <= 100
    assert metrics["ingestion/train/images"] == 24
    assert metrics["ingestion/val/images"] == 8
    assert metrics["ingestion/skipped_files"] == 0
    assert run.data.tags["dataset"] == "synthetic" and run.data.tags["backbone"] == "efficientnet_lite0"
    assert run.data.tags["seed"] == "0" and run.data.tags["env"] == "test"
    assert set(run.data.tags["methods"].split(",")) >= {"rgb_kmeans", "kmeans"}
    assert run.info.run_name == "__default__ synthetic efficientnet_lite0 seed 0"  # tells runs apart in the UI
    # parameters are logged flattened
    assert run.data.params["dataset.synthetic.num_train"] == "24"
    assert run.data.params["features.backbone"] == "efficientnet_lite0"

    client = mlflow.MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    artifacts |= {a.path for a in client.list_artifacts(run.info.run_id, "plots/confusion")}
    assert {"plots/overlay_grid.png", "plots/iou_per_class.png",
            *(f"plots/confusion/confusion_{m}.png" for m in METHODS),
            *(f"plots/training_curves_{m}.png" for m in ("picie", "primaps_em", "picie_primaps_em"))} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "reports")} == {
        "reports/comparison_table.md", "reports/runs_summary.md", "reports/scores.json"}
    # the models: every fitted head (what predict reads by run id) and PiCIE's network as an MLflow model
    assert {a.path for a in client.list_artifacts(run.info.run_id, "models")} >= {
        f"models/{m}_model_mlflow.json" for m in ("rgb_kmeans", "kmeans", "linear_probe", "picie", "primaps_em",
                                                  "picie_primaps_em")}
    logged = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                         filter_string=f"source_run_id = '{run.info.run_id}'")
    assert [m.name for m in logged] == ["picie"]
    scores = json.loads(next((project_copy / "data/07_model_output/kmeans_scores.json").glob("*/*.json")).read_text())
    assert scores["miou"] == pytest.approx(metrics["eval/kmeans/miou"])

    # predict with this run's models on the prepared val crops reproduces the evaluation's val predictions: PiCIE
    # (network + centroids) from the local files, PiCIE + PriMaPs-EM with the CRF from the MLflow run (its network is
    # the run's MLflow model), PriMaPs-EM's student and the probe on the frozen backbone
    def store(folder: str) -> ShardStore:
        return ShardStore(next((project_copy / folder).glob("*/*/meta.json")).parent)

    val = store("data/03_primary/val_images")
    incoming = project_copy / "incoming"
    incoming.mkdir(exist_ok=True)
    for key in val.ids:
        Image.fromarray(val.item(key, ["image"])["image"]).save(incoming / f"{key}.png")
    for method, run_id in (("picie", None), ("picie_primaps_em_crf", f"runs:/{run.info.run_id}"),
                           ("primaps_em_student", None), ("linear_probe", None)):
        while mlflow.active_run() is not None:  # each CLI run is its own process; here they share one
            mlflow.end_run()
        _run(project_copy, "predict", runtime_params={"predict": {"input_dir": str(incoming), "method": method,
                                                                  "run_id": run_id}})
        report_file = max((project_copy / "data/08_reporting/predict_report.json").glob("*/predict_report.json"))
        report = json.loads(report_file.read_text())
        assert (report["method"], report["images"], report["skipped"]) == (method, len(val), [])
        mapping = np.array(json.loads((project_copy / "data/08_reporting/scores.json").read_text())[method]["mapping"])
        lut = np.where(mapping < 0, 255, mapping)
        evaluated = store(f"data/07_model_output/{method}_val_predictions")
        agree = np.mean([np.mean(lut[evaluated.item(key, ["pred"])["pred"]] == np.asarray(
            Image.open(project_copy / "data/07_model_output/predict" / report_file.parent.name / "predict" / key
                       / "label.png"))) for key in val.ids])
        assert agree > 0.99, f"{method}: predict agrees with the evaluation on {agree:.2%} of the val pixels"



def test_a_killed_rank_stops_the_run_and_the_rerun_equals_one_process(tmp_path: Path, default_chain: Path) -> None:
    single, project = default_chain, copy_project(tmp_path)
    # rank 1 killed while rank 0 trains PiCIE (the feature stores are complete, rank 1 waits for the next node)
    killed = kill_rank_after(project, "data/04_feature/feat_val/*/*/meta.json", rank=1)
    assert killed.returncode != 0
    assert "local_rank: 1" in killed.stdout and "SIGKILL" in killed.stdout  # torchrun names the failed rank
    assert [run.info.status for run in runs(project)] == ["KILLED"]  # rank 0 was stopped and said so

    done = subprocess.run(command(2), cwd=project, env=run_environment(project), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "holds this data already" in done.stdout  # the stores finished before the kill are reused
    assert [run.info.status for run in runs(project)] == ["KILLED", "FINISHED"]  # one MLflow run per run

    for folder in STORES:
        two, one = latest_store(project, folder), latest_store(single, folder)
        assert two.ids == one.ids and two.shard_counts == one.shard_counts, folder  # (fingerprints name the paths)
        for index in range(one.num_shards):
            for name, array in one.shard(index).items():
                assert array.tobytes() == two.shard(index)[name].tobytes(), (folder, index, name)
    tables = [pd.read_csv(max((p / "data/08_reporting/comparison_table.csv").glob("*/comparison_table.csv")))
              .set_index("method") for p in (single, project)]
    assert list(tables[0].index) == list(tables[1].index)
    assert (tables[0]["miou"] - tables[1]["miou"]).abs().max() <= 1.0
    finished = runs(project)[-1]
    assert finished.data.metrics["eval/kmeans/miou"] == pytest.approx(float(tables[1].loc["kmeans", "miou"]), abs=0.01)
