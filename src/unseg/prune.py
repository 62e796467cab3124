"""Bounded disk: removes old versions, the stored data only they used, unfinished writes and old checkpoints.

    python -m unseg.prune --keep 3 --dry-run     # list what would go, and how many bytes
    python -m unseg.prune --keep 3               # remove it

What goes, under the project's data folder (the rest stays):
- versions: of every versioned dataset (a folder whose entries are Kedro version folders), all but the newest
  `keep`. The newest version of every dataset always stays, so whatever the latest run used (or made) stays.
- pooled data: `<dataset>/.stores/<fingerprint>/` folders that no kept version's record names
  (`unseg.datasets.ShardStoreDataset`), and `<dataset>/.stores/<hash>.pt` files no kept version links to
  (`unseg.datasets.PooledTorchDataset`);
- unfinished writes: staging folders (`.<name>.staging-<fingerprint>`: the finished shards of a killed write, kept
  so that the next run resumes) and the work folders of writers that died;
- checkpoints: of every checkpoint folder (one subfolder per training fingerprint, holding `epoch_NNNN.pt` or
  `epoch-NNNN.pt` files: PiCIE's and PriMaPs-EM's), all but the `keep` most recently written subfolders. A run whose
  checkpoints were removed trains again from scratch; its final weights live on in the versioned models.

It takes the project's run lock (`unseg.lock`), so it never runs beside a `kedro run` of the project. MLflow's own
store (mlflow.db, mlartifacts/) is MLflow's to prune: `mlflow gc`.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from unseg.core.store import META_FILE, pid_alive
from unseg.datasets.shard_store_dataset import POOL
from unseg.lock import LOCK_FILE, RunLock

logger = logging.getLogger(__name__)

VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}\.\d{2}\.\d{2}\.\d{3}Z$")  # Kedro's save versions
CHECKPOINT = re.compile(r"^epoch[_-]\d+\.pt$")
STAGING = re.compile(r"^\..+\.staging-[0-9A-Za-z_-]+$")
WORK = re.compile(r"^\..+\.(?:tmp|old)-(\d+)$")


@dataclass(frozen=True)
class Removal:
    path: Path
    reason: str
    size: int


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _pooled_data(record: Path) -> Path | None:
    """The pooled store a version's store record names, if it is one."""
    meta = record / META_FILE
    if not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text()).get("data")
    except (OSError, ValueError):
        return None
    return (record / data).resolve() if data else None


def _old_versions(dataset: Path, keep: int) -> Iterator[Removal]:
    versions = sorted(p for p in dataset.iterdir() if p.is_dir() and VERSION.match(p.name))
    kept = versions[-keep:]
    for old in versions[:-keep]:
        yield Removal(old, f"version older than the newest {keep}", _size(old))
    pool = dataset / POOL
    if pool.is_dir():
        used = {_pooled_data(record) for version in kept for record in version.iterdir()}
        linked = {f.stat().st_ino for version in kept for f in version.rglob("*") if f.is_file()}
        for data in sorted(pool.iterdir()):
            if data.name.startswith("."):
                continue
            # a store folder no kept record names, or a pooled file no kept version links to (PooledTorchDataset)
            unused = data.resolve() not in used if data.is_dir() else data.stat().st_ino not in linked
            if unused:
                yield Removal(data, f"stored data no kept version of {dataset.name} uses", _size(data))


def _old_checkpoints(folder: Path, keep: int) -> Iterator[Removal]:
    runs = [p for p in folder.iterdir() if p.is_dir() and any(CHECKPOINT.match(f.name) for f in p.iterdir())]
    runs.sort(key=lambda p: max(f.stat().st_mtime_ns for f in p.iterdir() if CHECKPOINT.match(f.name)))
    for old in runs[:-keep]:
        yield Removal(old, f"checkpoints older than the newest {keep} runs", _size(old))


def plan(data: Path, keep: int) -> list[Removal]:
    """What pruning `data` down to `keep` versions (and checkpoint runs) removes; see the module docstring."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1 (the newest version of everything always stays), got {keep}")
    removals: list[Removal] = []
    checkpoint_folders: set[Path] = set()
    for folder in sorted(p for p in Path(data).rglob("*") if p.is_dir()):
        if any(folder.is_relative_to(r.path) for r in removals):
            continue
        name = folder.name
        work = WORK.match(name)
        if STAGING.match(name) or (work and not pid_alive(int(work.group(1)))):
            removals.append(Removal(folder, "an unfinished write", _size(folder)))
        elif any(p.is_dir() and VERSION.match(p.name) for p in folder.iterdir()):
            removals.extend(_old_versions(folder, keep))
        elif folder.parent not in checkpoint_folders and any(CHECKPOINT.match(f.name) for f in folder.iterdir()):
            checkpoint_folders.add(folder.parent)
            removals.extend(_old_checkpoints(folder.parent, keep))
    return removals


def prune(data: Path, keep: int, dry_run: bool = False) -> list[Removal]:
    """Removes what `plan` lists (nothing with `dry_run`), holding the project's run lock.

    Raises:
        ProjectLockedError: a `kedro run` of the project is running.
    """
    lock = RunLock(Path(data) / LOCK_FILE)
    lock.acquire({"command": "prune"})
    try:
        removals = plan(Path(data), keep)
        for removal in removals:
            logger.info("%s %s (%s, %.1f MB)", "would remove" if dry_run else "removing", removal.path,
                        removal.reason, removal.size / 1e6)
            if dry_run:
                continue
            if removal.path.is_dir():
                shutil.rmtree(removal.path, ignore_errors=True)
            else:
                removal.path.unlink(missing_ok=True)
        return removals
    finally:
        lock.release()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unseg.prune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=int, default=3, help="versions (and checkpoint runs) kept per dataset")
    parser.add_argument("--data", type=Path, default=Path("data"), help="the project's data folder")
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.data.is_dir():
        parser.error(f"{args.data}: no such folder (run from the project root or pass --data)")
    removals = prune(args.data, args.keep, args.dry_run)
    total = sum(r.size for r in removals) / 1e9
    logger.info("%s %.2f GB in %d folders", "would free" if args.dry_run else "freed", total, len(removals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
