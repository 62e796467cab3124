"""torch.distributed for the chain: which process am I, which shards are mine, do all processes agree.

`torchrun` starts one process per device and sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous variables;
`init_from_env` then joins the default process group (NCCL for CUDA devices, gloo on the CPU). Without torchrun (or
with one process) nothing is initialised, the helpers say "rank 0 of 1" and every collective returns at once, so the
single-process code path is the distributed one with a world of 1.

Data-parallel writes split a store's shards by rank (`my_share`: shard i goes to rank i mod world, a fixed
assignment, so the same shards come out whatever the world size); what one process decides for all (a reuse, a
fitted model) is decided on rank 0 and broadcast (`broadcast_object`); what every process computed for itself and
must be equal (a stream's fingerprint) is compared with `check_same`, which stops every process with the values
each rank had.

A process that fails exits; torchrun then ends the other processes of the group (they would otherwise wait in the
next collective), so the group timeout (`UNSEG_DIST_TIMEOUT_MIN`, default 48 h) only bounds how long the other
ranks wait while rank 0 alone runs a long step (e.g. training).
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

T = TypeVar("T")
TIMEOUT_ENV = "UNSEG_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 48 * 60


class DistributedMismatch(RuntimeError):
    """Processes of one run computed different values where they must agree (their inputs differ)."""


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """RANK as torchrun sets it (0 without torchrun); readable before the process group exists."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's index on its machine (LOCAL_RANK; 0 without torchrun): its CUDA device."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def cpus_per_process() -> int:
    """The CPUs this process may use, shared with the other processes torchrun started on this machine
    (LOCAL_WORLD_SIZE): what `auto` worker counts (loader, decoding, DenseCRF) divide, so 8 processes on a machine
    do not each start a worker per core."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, usable // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def is_distributed() -> bool:
    """Whether a process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the process that writes what is written once (records, checkpoints, MLflow)."""
    return rank() == 0


def init_from_env() -> bool:
    """Joins the process group torchrun describes (NCCL when CUDA is available, else gloo); a no-op without torchrun,
    with WORLD_SIZE 1, or when already joined. Returns whether the process is part of a group of several.

    Raises:
        ValueError: UNSEG_DIST_TIMEOUT_MIN is not a positive number.
    """
    if env_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return is_distributed()
    minutes = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_MIN))
    if not minutes > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be a positive number of minutes, got {os.environ[TIMEOUT_ENV]!r}")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=minutes))
    logger.info("Process %d of %d joined the process group (%s)", dist.get_rank(), dist.get_world_size(),
                dist.get_backend())
    return is_distributed()


def barrier() -> None:
    """Waits for every process (a no-op in a world of 1)."""
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank `src`'s `obj` on every rank (pickled; for small objects)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order ([obj] in a world of 1)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def check_same(what: str, value: Any) -> None:
    """Stops every rank when `value` (compared by repr) differs between ranks.

    Raises:
        DistributedMismatch: naming `what` and each rank's value.
    """
    values = all_gather_object(value)
    if len({repr(v) for v in values}) > 1:
        listed = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
        raise DistributedMismatch(f"{what} differs between the processes of this run ({listed}); they must read the "
                                  "same inputs with the same settings (a shared file system, one code version)")


def my_share(items: Sequence[T]) -> list[T]:
    """This rank's items: items[rank::world] (all of them in a world of 1)."""
    return list(items[rank()::world_size()])
