"""The test environment's whole chain under `torchrun --nproc-per-node=2 -m unseg run` (gloo on the CPU) against one
process: a rank killed mid-run ends the run with an error that names it (no hang), the rerun resumes and completes,
every run is one MLflow run, and the outputs are those of `python -m unseg run`: the same stores byte for byte and
the same comparison table."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from unseg.core.store import ShardStore

pytestmark = pytest.mark.integration

STORES = ("data/03_primary/train_images", "data/04_feature/feat_train", "data/04_feature/feat_val",
          "data/05_model_input/primaps_train_masks", "data/07_model_output/kmeans_val_predictions",
          "data/07_model_output/picie_val_predictions")
TIMEOUT_S = 600
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def command(processes: int) -> list[str]:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] if processes > 1 else []
    return [sys.executable, *launcher, "-m", "unseg", "run", "--env", "test"]


def environment(project: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}


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
        process = subprocess.Popen(command(2), cwd=project, env=environment(project), stdout=out,
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
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = copy_project(tmp_path_factory.mktemp("single"))
    done = subprocess.run(command(1), cwd=project, env=environment(project), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return project


def copy_project(tmp: Path) -> Path:
    """What the `project_copy` fixture makes, in a folder that a module-scoped fixture can own."""
    shutil.copytree(PROJECT_ROOT / "conf", tmp / "conf", ignore=shutil.ignore_patterns("local"))
    (tmp / "conf" / "local").mkdir()
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(PROJECT_ROOT / name, tmp / name)
    (tmp / "src").mkdir()
    (tmp / "data").mkdir()
    return tmp


def test_a_killed_rank_stops_the_run_and_the_rerun_equals_one_process(tmp_path: Path, single: Path) -> None:
    project = copy_project(tmp_path)
    # rank 1 killed while rank 0 trains PiCIE (the feature stores are complete, rank 1 waits for the next node)
    killed = kill_rank_after(project, "data/04_feature/feat_val/*/*/meta.json", rank=1)
    assert killed.returncode != 0
    assert "local_rank: 1" in killed.stdout and "SIGKILL" in killed.stdout  # torchrun names the failed rank
    assert [run.info.status for run in runs(project)] == ["KILLED"]  # rank 0 was stopped and said so

    done = subprocess.run(command(2), cwd=project, env=environment(project), stdout=subprocess.PIPE,
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
