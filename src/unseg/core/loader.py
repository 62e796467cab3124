"""Reading stores for the loops: batches of given items, read ahead by worker processes, in exactly the given order.

Every loop that reads a `ShardStore` (feature extraction, predictions, PiCIE's passes, the EM's batches) knows its
batches before it starts: a list of item positions each. `iter_reads` hands that list to a
`torch.utils.data.DataLoader` as its sampler (`batch_size=None`: one request is one batch), so worker processes read
the next batches from the memory maps while the device works on the current one, and the batches arrive in the order
given, whatever the number of workers. The workers only copy bytes: every random draw (views, augmentations,
shuffles) stays in the main process where it was, so seeds behave the same with or without workers, and the
DataLoader's own seed comes from a private generator, never from the global torch RNG.

Memory maps are opened lazily in the process that reads (never pickled into a worker) and kept for a bounded number
of shards. With `num_workers=0` nothing is started: the batches are read in the calling process, as plain loops do.
On CUDA the batches come in pinned memory, and `to_device` copies them without blocking.

An online store (`unseg.core.online.OnlineStore`: shards computed by a backbone when read) is always read in the
calling process, whatever `num_workers` says: its backbone lives there (possibly on CUDA) and is never pickled into a
worker; its own cache bounds the shards held, and its `rows` computes only the items of a shuffled batch.

The number of workers is one setting (`loader.num_workers` in conf/base/parameters.yml): an int, or `auto`, which
`resolve_num_workers` turns into 0 on the CPU (a CPU run spends its cores on the model, not on reading) and into a
few workers on a CUDA machine.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from unseg.core.distributed import cpus_per_process
from unseg.core.store import StoreReader

AUTO = "auto"
MAX_AUTO_WORKERS = 8  # read-ahead of memory-mapped shards saturates long before this many processes
OPEN_SHARDS = 32  # memory maps kept open per process (each holds a file descriptor)


def resolve_num_workers(value: int | str, device: torch.device) -> int:
    """The number of loader processes: `value` itself, or for "auto" 0 on the CPU and min(8, CPUs / 2) on CUDA (the
    CPUs of this process: under torchrun its share of the machine's).

    Raises:
        ValueError: neither "auto" nor an integer >= 0.
    """
    if value == AUTO:
        return min(MAX_AUTO_WORKERS, max(1, cpus_per_process() // 2)) if device.type == "cuda" else 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"loader.num_workers must be 'auto' or an integer >= 0, got {value!r}")
    return value


def _positions(batch: Iterable[int]) -> tuple[int, ...]:
    return tuple(int(p) for p in batch)


class StoreReads(Dataset[dict[str, np.ndarray]]):
    """Fields of a store for a batch of item positions: `reads[(3, 4, 9)]` -> field -> array (3, *shape).

    Args:
        store: the store (its metadata is pickled; its shards are memory-mapped by the process that reads).
        names: the fields read.
    """

    def __init__(self, store: StoreReader, names: Sequence[str]) -> None:
        missing = [name for name in names if name not in store.fields]
        if missing:
            raise ValueError(f"{store.root}: no field {missing}; it holds {list(store.fields)}")
        self.store = store
        self.names = list(names)
        self.starts = np.concatenate([[0], np.cumsum(store.shard_counts)]).astype(np.int64)
        self._maps: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": OrderedDict()}  # memory maps are opened where they are read

    def __len__(self) -> int:
        return len(self.store)

    def _shard(self, index: int) -> dict[str, np.ndarray]:
        if self._pid != os.getpid():  # a forked worker: its parent's maps stay with the parent
            self._maps, self._pid = OrderedDict(), os.getpid()
        if index in self._maps:
            self._maps.move_to_end(index)
        else:
            self._maps[index] = self.store.shard(index, self.names)
            while len(self._maps) > OPEN_SHARDS:  # the least recently used go
                self._maps.popitem(last=False)
        return self._maps[index]

    def __getitem__(self, batch: Sequence[int]) -> dict[str, np.ndarray]:
        positions = np.asarray(batch, dtype=np.int64).reshape(-1)
        if len(positions) and (positions.min() < 0 or positions.max() >= len(self.store)):
            raise IndexError(f"{self.store.root}: positions outside [0, {len(self.store)}): {positions.tolist()[:10]}")
        if getattr(self.store, "online", False):  # computed where read: its own cache, only the items asked for
            return self.store.rows(positions, self.names)  # type: ignore[attr-defined]
        out = {name: np.empty((len(positions), *self.store.fields[name].shape), self.store.fields[name].dtype)
               for name in self.names}
        shards = np.searchsorted(self.starts, positions, side="right") - 1
        for shard in np.unique(shards).tolist():
            rows = np.nonzero(shards == shard)[0]
            offsets = positions[rows] - self.starts[shard]
            run = bool(np.all(np.diff(offsets) == 1))  # a run of consecutive items: one slice of the map
            take = slice(int(offsets[0]), int(offsets[-1]) + 1) if run else offsets
            where = slice(int(rows[0]), int(rows[-1]) + 1) if bool(np.all(np.diff(rows) == 1)) else rows
            for name, array in self._shard(shard).items():
                out[name][where] = array[take]
        return out


def iter_reads(store: StoreReader, names: Sequence[str], batches: Sequence[Iterable[int]], num_workers: int = 0,
               pin_memory: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Field -> CPU tensor (len(batch), *shape) for each batch of item positions, in the order of `batches`.

    Args:
        store: what is read.
        names: the fields read.
        batches: item positions per batch (any order, repeats allowed; an empty batch gives empty arrays).
        num_workers: reading processes; 0 reads in the calling process, one batch at a time (so does an online
            store, whatever the number).
        pin_memory: page-locked tensors (CUDA: copy them with `to_device`, which does not block).

    Yields:
        One dict per batch: the store's dtype, the arrays the store holds at those positions.
    """
    reads = StoreReads(store, names)
    requests = [_positions(batch) for batch in batches]
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if num_workers == 0 or not requests or getattr(store, "online", False):  # an online store's backbone stays here
        for request in requests:
            arrays = {name: torch.from_numpy(array) for name, array in reads[request].items()}
            yield {name: t.pin_memory() for name, t in arrays.items()} if pin_memory else arrays
        return
    loader = DataLoader(reads, batch_size=None, sampler=requests, num_workers=min(num_workers, len(requests)),
                        pin_memory=pin_memory, prefetch_factor=2, persistent_workers=False,
                        generator=torch.Generator().manual_seed(0))  # the global torch RNG is left untouched
    batches = iter(loader)
    try:
        yield from batches
    finally:  # a consumer that stops early or fails: the workers end now, not when a traceback lets go of them
        del batches  # the last reference: the DataLoader iterator shuts its workers down


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`; from pinned memory without blocking the host."""
    return tensor.to(device, non_blocking=tensor.is_pinned())


def shard_batches(store: StoreReader, shards: Sequence[int], batch_size: int | None = None) -> list[list[int]]:
    """The item positions of `shards`, in store order, cut into batches of `batch_size` items.

    batch_size None: one batch per shard, the whole shard (empty for an empty shard). Otherwise a shard of n items
    gives ceil(n / batch_size) batches (none for an empty shard)."""
    starts = np.concatenate([[0], np.cumsum(store.shard_counts)]).astype(np.int64)
    out: list[list[int]] = []
    for index in shards:
        positions = list(range(int(starts[index]), int(starts[index + 1])))
        if batch_size is None:
            out.append(positions)
        else:
            out.extend(positions[s:s + batch_size] for s in range(0, len(positions), batch_size))
    return out
