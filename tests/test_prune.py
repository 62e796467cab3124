"""Pruning keeps the newest versions, the data they use and the newest checkpoints; it removes the rest."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from kedro.io import Version

from unseg.core.store import FieldSpec, Shard, ShardStore
from unseg.datasets import ShardStoreDataset
from unseg.lock import LOCK_FILE, ProjectLockedError, RunLock
from unseg.prune import main, plan, prune


class Stream:
    """Two shards of 2 items, each item filled with `value`."""

    def __init__(self, value: int) -> None:
        self.value = value
        self.fields = {"x": FieldSpec("uint8", (4,))}
        self.attrs: dict[str, object] = {}
        self.fingerprint = f"fp{value}"
        self.num_shards = 2

    def iter_shards(self, todo: Sequence[int]) -> Iterator[Shard]:
        for index in todo:
            yield Shard(index, [f"i{index}{k}" for k in range(2)], {"x": np.full((2, 4), self.value, np.uint8)})


def save(filepath: Path, value: int) -> None:
    ShardStoreDataset(str(filepath), version=Version(None, None), progress=False).save(Stream(value))
    time.sleep(0.002)  # versions are millisecond timestamps


def versions(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A data folder after a few runs: a versioned store saved 4 times (data 1, 2, 2, 3: the third save reused the
    second's data), a versioned JSON file with 3 versions, an unfinished write, a work folder of a dead writer and
    PiCIE checkpoints of 3 runs."""
    data = tmp_path / "data"
    for value in (1, 2, 2, 3):
        save(data / "04_feature" / "feat", value)
    for k in range(3):
        version = data / "06_models" / "m.json" / f"2026-12-0{k + 1}T10.00.00.000Z"
        version.mkdir(parents=True)
        (version / "m.json").write_text(str(k))
    (data / "04_feature" / "feat" / ".stores" / ".fp9.staging-fp9" / "shard-00000").mkdir(parents=True)
    (data / "03_primary" / ".images.tmp-4194304").mkdir(parents=True)
    for k in range(3):
        run = data / "06_models" / "picie_checkpoints" / f"run{k}"
        run.mkdir(parents=True)
        (run / "epoch_0002.pt").write_bytes(b"w" * 10)
        os.utime(run / "epoch_0002.pt", ns=(10**18 + k, 10**18 + k))
    return data


def test_prune_keeps_the_newest_and_what_they_use(data: Path) -> None:
    feat = data / "04_feature" / "feat"
    before = versions(feat)
    removed = prune(data, keep=2)
    assert versions(feat) == before[-2:]
    # the kept versions use data 2 (reused by the third save) and 3; data 1 is gone with its version
    assert sorted(p.name for p in (feat / ".stores").iterdir()) == ["fp2", "fp3"]
    for version in before[-2:]:
        assert len(ShardStore(feat / version / "feat")) == 4
    assert versions(data / "06_models" / "m.json") == ["2026-12-02T10.00.00.000Z", "2026-12-03T10.00.00.000Z"]
    assert sorted(p.name for p in (data / "06_models" / "picie_checkpoints").iterdir()) == ["run1", "run2"]
    assert not (data / "03_primary" / ".images.tmp-4194304").exists()
    reasons = {r.path.name: r.reason for r in removed}
    assert reasons["fp1"].startswith("stored data no kept version") and reasons[".fp9.staging-fp9"] == \
        "an unfinished write"
    latest = ShardStoreDataset(str(feat), version=Version(None, None)).load()
    np.testing.assert_array_equal(latest.item(0)["x"], [3, 3, 3, 3])


def test_keep_one_leaves_exactly_what_the_latest_run_uses(data: Path) -> None:
    prune(data, keep=1)
    feat = data / "04_feature" / "feat"
    assert len(versions(feat)) == 1 and [p.name for p in (feat / ".stores").iterdir()] == ["fp3"]
    assert [p.name for p in (data / "06_models" / "picie_checkpoints").iterdir()] == ["run2"]
    assert plan(data, keep=1) == []  # nothing more to remove


def test_dry_run_removes_nothing_and_reports_sizes(data: Path, caplog: pytest.LogCaptureFixture) -> None:
    listing = sorted(str(p) for p in data.rglob("*"))
    assert main(["--data", str(data), "--keep", "1", "--dry-run"]) == 0
    assert sorted(str(p) for p in data.rglob("*") if p.name != LOCK_FILE) == listing
    assert "would free" in caplog.text
    sizes = {r.path.name: r.size for r in plan(data, keep=1)}
    assert {"fp1", "fp2", "run0", "run1"} <= set(sizes) and all(sizes[n] > 0 for n in ("fp1", "fp2", "run0"))


def test_prune_refuses_while_a_run_holds_the_lock(data: Path) -> None:
    lock = RunLock(data / LOCK_FILE)
    lock.acquire()
    try:
        # flock is per open file description: a second RunLock in this process is refused like another process
        with pytest.raises(ProjectLockedError, match="another kedro run"):
            prune(data, keep=1)
    finally:
        lock.release()
    assert len(versions(data / "04_feature" / "feat")) == 4


def test_keep_must_be_positive(data: Path) -> None:
    with pytest.raises(ValueError, match="keep must be >= 1"):
        plan(data, keep=0)


def test_equal_weights_take_the_disk_once_and_prune_follows_the_links(tmp_path: Path) -> None:
    """PooledTorchDataset: two versions of the same weights are two links to one pooled file; other weights get
    their own; pruning to the newest version removes the pooled file only the old versions linked."""
    import torch

    from unseg.datasets import PooledTorchDataset

    data = tmp_path / "data"
    filepath = data / "06_models" / "net.pt"
    torch.manual_seed(0)
    first, second = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    for module in (first, first, second):
        PooledTorchDataset(filepath=str(filepath), version=Version(None, None)).save(module)
        time.sleep(0.002)
    files = [filepath / v / "net.pt" for v in versions(filepath)]
    assert files[0].stat().st_ino == files[1].stat().st_ino != files[2].stat().st_ino
    assert len(list((filepath / ".stores").iterdir())) == 2
    loaded = PooledTorchDataset(filepath=str(filepath), version=Version(versions(filepath)[0], None)).load()
    assert torch.equal(loaded["weight"], first.weight)
    prune(data, keep=1)
    assert len(versions(filepath)) == 1 and len(list((filepath / ".stores").iterdir())) == 1
    latest = PooledTorchDataset(filepath=str(filepath), version=Version(None, None)).load()
    assert torch.equal(latest["weight"], second.weight)
