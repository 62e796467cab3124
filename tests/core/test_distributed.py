"""Data-parallel store writes under torch.distributed (gloo, 2 processes by torchrun) against one process: every
stream of the chain written by 2 ranks (each its share of the shards) is the store 1 process writes, byte for byte;
ranks whose streams differ stop with an error that names both fingerprints, writing nothing; the helpers in a world
of 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from unseg.core import distributed
from unseg.core.store import ShardStore

WORKER = Path(__file__).with_name("distributed_worker.py")
STORES = ("images", "feat/v1", "masks", "kmeans_pred", "picie_feat")


def run_worker(out: Path, processes: int) -> subprocess.CompletedProcess[str]:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
                if processes > 1 else [sys.executable])
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "KEDRO_DISABLE_TELEMETRY": "1"}
    return subprocess.run([*launcher, str(WORKER), str(out)], capture_output=True, text=True, timeout=600,
                          env=env)


def assert_same_stores(a: Path, b: Path) -> None:
    left, right = ShardStore(a), ShardStore(b)
    assert left.ids == right.ids and left.shard_counts == right.shard_counts
    assert left.fingerprint == right.fingerprint and left.attrs == right.attrs
    for index in range(left.num_shards):
        for name, array in left.shard(index).items():
            other = right.shard(index)[name]
            assert array.dtype == other.dtype and array.tobytes() == other.tobytes(), (a, index, name)


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("distributed")
    for out, processes in ((tmp / "one", 1), (tmp / "two", 2)):
        done = run_worker(out, processes)
        assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "one", tmp / "two"


@pytest.mark.parametrize("name", STORES)
def test_two_ranks_write_the_store_one_process_writes(one_and_two: tuple[Path, Path], name: str) -> None:
    one, two = one_and_two
    assert_same_stores(one / name, two / name)
    store = ShardStore(two / name)
    assert len(store) == 11 and store.shard_counts == [2, 2, 2, 2, 2, 1]


def test_two_ranks_leave_no_temporary_and_one_record(one_and_two: tuple[Path, Path]) -> None:
    _, two = one_and_two
    leftovers = [p.name for p in two.rglob("*") if ".tmp-" in p.name or ".staging-" in p.name]
    assert leftovers == []
    record = json.loads((two / "feat" / "v1" / "meta.json").read_text())
    assert (two / "feat" / "v1" / record["data"]).resolve() == (two / "feat" / ".stores" / record["fingerprint"])
    assert len(list((two / "feat" / ".stores").iterdir())) == 1


def test_masks_differ_between_images(one_and_two: tuple[Path, Path]) -> None:
    """The stores compared are not trivially equal (e.g. all zeros)."""
    masks = ShardStore(one_and_two[0] / "masks")
    first, last = masks.item(0)["mask"], masks.item(10)["mask"]
    assert len(np.unique(first)) > 1 and not np.array_equal(first, last)


def test_ranks_with_different_streams_stop_naming_both(one_and_two: tuple[Path, Path]) -> None:
    one, two = one_and_two
    for rank in (0, 1):  # every rank stops, with each rank's fingerprint
        message = (two / f"mismatch-rank{rank}.txt").read_text()
        assert "differs between the processes" in message
        assert "rank 0: 'images-11'" in message and "rank 1: 'other-images-11'" in message
    assert not (two / "mismatch").exists() and not list(two.glob(".mismatch.*"))  # nothing written, nothing left
    assert ShardStore(one / "mismatch").fingerprint == "images-11"  # one process: no one to disagree with


def test_a_world_of_one() -> None:
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.my_share(list(range(5))) == [0, 1, 2, 3, 4]
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.all_gather_object(3) == [3]
    distributed.check_same("x", 1)
    distributed.barrier()
    assert distributed.init_from_env() is False  # no torchrun: nothing joined


def test_auto_worker_counts_share_the_machine_between_local_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """8 processes on a 32-CPU machine get 4 CPUs each for their loader, decode and CRF workers, not 32."""
    import torch

    from unseg.core.data.prepare import decode_workers
    from unseg.core.loader import resolve_num_workers

    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert distributed.cpus_per_process() == 32
    assert (decode_workers("auto"), resolve_num_workers("auto", torch.device("cuda"))) == (8, 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert distributed.cpus_per_process() == 4
    assert (decode_workers("auto"), resolve_num_workers("auto", torch.device("cuda"))) == (4, 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")
    assert distributed.cpus_per_process() == 1
