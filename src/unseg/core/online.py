"""A store computed where it is read: the shards of a stream, made on demand instead of written to disk.

`OnlineStore(stream)` reads like the `ShardStore` that `write_store(stream, ...)` would write (same ids, shards,
fields, attrs with the ingestion lineage, fingerprint, items, `sample_vectors` draws), but holds no data: shard i is
`stream.iter_shards([i])`, computed when first read and kept among the last `cache_shards` shards read (consumers
read item by item in shard order: `sample_vectors`, `ItemReader`, the loader's batches). Memory stays at those
shards plus one request. The streams are the feature streams (`FeatureStream`, `PiCIEFeatureStream`): one output
shard per shard of their input store `images`, with its ids.

Why (issue 13): at COCO-Stuff scale the frozen train features take 64 GB and PiCIE's 85 GB; on a GPU the backbone
is cheap next to that, so a catalog entry can say "compute these where they are read" (`OnlineStoreDataset`,
docs/storage.md). The cost: every consumer runs the backbone again, on every pass it makes.

Reads of items that are neither in a cached shard nor a run of consecutive positions (the EM's shuffled batches)
compute only those items: the stream runs on a one-shard view of its input holding them (`rows`), so a random batch
of B items costs B images, not B shards. Features of one image do not depend on the other images of its batch, up to
floating-point reordering of the backbone's kernels (not bit for bit on every device).

The backbone lives in this process (possibly on CUDA): `unseg.core.loader` reads an online store in the calling
process whatever its `num_workers`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from unseg.core.loader import StoreReads
from unseg.core.store import (
    ArrayStream,
    FieldSpec,
    ShardStore,
    StoreError,
    StoreReader,
    _check_shard,
    _lineage_attrs,
)

logger = logging.getLogger(__name__)

CACHE_SHARDS = 2  # computed shards kept: the one being read and the one before (a run across a shard boundary)


class OnlineSource(ArrayStream, Protocol):
    """An ArrayStream with one output shard per shard of its input store `images`, holding that shard's ids."""

    images: ShardStore


class _Selection(StoreReader):
    """Items of a store at given positions as a one-shard store (the input of a stream computing only them)."""

    def __init__(self, base: StoreReader, positions: np.ndarray) -> None:
        self.base = base
        self.positions = positions
        self.root = base.root
        self.fields = dict(base.fields)
        self.ids = [base.ids[int(p)] for p in positions]
        self.shard_counts = [len(positions)]
        self.skipped: list[dict[str, str]] = []
        self.attrs = dict(base.attrs)
        self.fingerprint = base.fingerprint
        self._index_items()

    def shard(self, index: int, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        if index != 0:
            raise IndexError(f"{self.root}: a selection has one shard, asked for {index}")
        return StoreReads(self.base, list(names or self.fields))[self.positions]  # one read per input shard


class OnlineStore(StoreReader):
    """Read-only store whose shards `stream` computes when they are read (see the module docstring).

    Args:
        stream: the producer (its `images` gives the ids and shards).
        description: names the data in messages (e.g. the catalog entry, "feat_train").
        cache_shards: computed shards kept in memory (at least 1).

    Attributes:
        root: a description for messages, "<online feat_train: dino_vits8 over data/03_primary/...>" (no path).
        shards_computed: how many shards (or item selections) the stream has computed so far.

    Raises:
        StoreError: the stream's shard count differs from its input's, or it reads stores of different ingestions.
    """

    online = True

    def __init__(self, stream: OnlineSource, description: str | None = None,
                 cache_shards: int = CACHE_SHARDS) -> None:
        images = stream.images
        if stream.num_shards != images.num_shards:
            raise StoreError(f"an online store needs one output shard per input shard; the stream makes "
                             f"{stream.num_shards}, its input {images.root} holds {images.num_shards}")
        if cache_shards < 1:
            raise ValueError(f"cache_shards must be >= 1, got {cache_shards}")
        self.stream = stream
        producer = stream.attrs.get("backbone", type(stream).__name__)
        self.root = f"<online {description or 'store'}: {producer} over {images.root}>"
        self.fields: dict[str, FieldSpec] = dict(stream.fields)
        self.ids = list(images.ids)
        self.shard_counts = list(images.shard_counts)
        self.skipped: list[dict[str, str]] = []
        self.attrs = _lineage_attrs(stream, Path(description or "online store"))  # as write_store records them
        self.fingerprint = stream.fingerprint
        self.cache_shards = cache_shards
        self.shards_computed = 0
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._index_items()

    def __repr__(self) -> str:
        return f"OnlineStore({self.root!r}, items={len(self)}, fields={list(self.fields)})"

    # ------------------------------------------------------------------------------------------------------ shards
    def _keep(self, index: int, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._cache[index] = arrays
        self._cache.move_to_end(index)
        while len(self._cache) > self.cache_shards:  # the least recently read go
            self._cache.popitem(last=False)
        return arrays

    def _arrays(self, produced: Any, ids: list[str]) -> dict[str, np.ndarray]:
        """The produced shard's fields as write_store stores them (declared dtype, contiguous), read-only."""
        _check_shard(produced, self.fields)
        if list(produced.ids) != ids:
            raise StoreError(f"{self.root}: shard {produced.index} holds other items than its input "
                             f"({list(produced.ids)[:5]} vs {ids[:5]})")
        self.shards_computed += 1
        arrays = {}
        for name, spec in self.fields.items():
            array = np.ascontiguousarray(produced.arrays[name], dtype=spec.dtype)
            array.flags.writeable = False  # like a stored shard's read-only memory map
            arrays[name] = array
        return arrays

    def _without_workers(self, images: StoreReader | None = None) -> OnlineSource:
        """The stream without reading processes (one shard or one batch: starting workers would cost more than the
        read), optionally over other input items."""
        changes: dict[str, Any] = {} if images is None else {"images": images}
        if dataclasses.is_dataclass(self.stream) and "num_workers" in {f.name for f in dataclasses.fields(self.stream)}:
            changes["num_workers"] = 0
        return dataclasses.replace(self.stream, **changes) if changes else self.stream  # type: ignore[type-var]

    def shard(self, index: int, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Field -> array (n, *shape) of shard `index`, computed unless it is among the last shards read."""
        if not 0 <= index < self.num_shards:
            raise IndexError(f"{self.root}: shard {index} out of range [0, {self.num_shards})")
        if index in self._cache:
            self._cache.move_to_end(index)
            arrays = self._cache[index]
        else:
            shards = self._without_workers().iter_shards([index])
            try:
                arrays = self._keep(index, self._arrays(next(iter(shards)), self.shard_ids(index)))
            finally:
                getattr(shards, "close", lambda: None)()
        return {name: arrays[name] for name in (names or self.fields)}

    def iter_shards(self, names: Sequence[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Every shard in order, from one pass of the stream (its reading processes read ahead)."""
        shards = self.stream.iter_shards(list(range(self.num_shards)))
        try:
            for index, produced in enumerate(shards):
                arrays = self._keep(index, self._arrays(produced, self.shard_ids(index)))
                yield {name: arrays[name] for name in (names or self.fields)}
        finally:
            getattr(shards, "close", lambda: None)()

    # ------------------------------------------------------------------------------------------------------- items
    def rows(self, positions: Sequence[int] | np.ndarray, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Field -> array (len(positions), *shape) of the items at `positions` (any order, repeats allowed).

        Items of a cached shard are copied from it; a run of consecutive positions (a sequential reader) computes
        and keeps its shards; any other items are computed alone, in one pass of the stream over them.
        """
        names = list(names or self.fields)
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        if len(positions) and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"{self.root}: positions outside [0, {len(self)}): {positions.tolist()[:10]}")
        out = {name: np.empty((len(positions), *self.fields[name].shape), self.fields[name].dtype) for name in names}
        shards = np.searchsorted(self._starts, positions, side="right") - 1
        sequential = bool(np.all(np.diff(positions) == 1))
        alone: list[np.ndarray] = []
        for shard in np.unique(shards).tolist():
            rows = np.nonzero(shards == shard)[0]
            if shard in self._cache or sequential:
                offsets = positions[rows] - self._starts[shard]
                for name, array in self.shard(shard, names).items():
                    out[name][rows] = array[offsets]
            else:
                alone.append(rows)
        if alone:
            rows = np.concatenate(alone)
            selection = _Selection(self.stream.images, positions[rows])
            shards_made = self._without_workers(selection).iter_shards([0])
            try:
                arrays = self._arrays(next(iter(shards_made)), selection.ids)
            finally:
                getattr(shards_made, "close", lambda: None)()
            for name in names:
                out[name][rows] = arrays[name]
        return out
