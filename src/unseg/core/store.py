"""Sharded on-disk store of per-image arrays (prepared images, dense features, predictions).

A store is a folder::

    meta.json              written last: fields, shards, ids, attrs; a store without it is not a store
    shard-00000/image.npy  one .npy per field per shard, memory-mapped on read
    shard-00000/label.npy
    ...

Writing goes through `write_store`, which takes an `ArrayStream` (a lazy producer of shards). Shard i holds what the
stream made of its i-th chunk of inputs (inputs it skipped are listed in `meta.json`, not stored). Each shard is
written into a temporary folder and renamed into place, so a shard folder that exists is complete; a killed write
resumes without recomputing finished shards as long as the stream's fingerprint is unchanged. Readers never load a whole
store: they read one item, one shard, or a random sample of vectors through memory maps.

Identity and lineage. A stream's `fingerprint` must change whenever its content would (prepared images: the settings
plus each source file's path, size and mtime_ns; derived stores: their settings plus the fingerprints of the stores
they read). Every store also records in `attrs["ingestion"]` the fingerprint of the ingestion it descends from (the
whole index with file sizes and mtimes, and the preparation settings): the prepared stream sets it, and `write_store`
copies it from the stores a derived stream reads (its `ShardStore` attributes). Stores of one ingestion share it, so
`check_same_ingestion` tells a consumer that its inputs belong together (e.g. train images of one data set and val
images of another, left as the latest versions by a run that failed between its two saves).

Reuse. A write whose target already holds a complete store of the same fingerprint does nothing (the stream is never
consumed, so nothing is computed). Versioned datasets keep their data content-addressed (`write_pooled`): the complete
store lives in `<dataset>/.stores/<fingerprint>/`, and each saved version is a record (a `meta.json` naming that
folder in its "data" entry), so a run whose inputs and settings are unchanged writes a few kB and still records which
stored data it used. A stream's fingerprint must therefore change whenever its output would, code changes included:
a stream whose computation changes bumps a version constant it hashes (e.g. `DECODING` of the prepared images).

Temporary files: a shard is written into a per-process work folder beside the staging folder (never inside it) and
renamed into the staging folder; anything else in the staging folder is removed before it becomes the store. Work
folders of dead processes, and staging folders of other fingerprints (abandoned writes that a complete write of the
same store made obsolete), are removed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from unseg.core.distributed import barrier, broadcast_object, check_same, is_main, my_share, rank, world_size

logger = logging.getLogger(__name__)

META_FILE = "meta.json"
FORMAT_VERSION = 1
INGESTION = "ingestion"  # attrs key: fingerprint of the ingestion a store descends from


class StoreError(RuntimeError):
    """A store on disk is missing, incomplete or does not match what was asked of it."""


@dataclass(frozen=True)
class FieldSpec:
    """dtype and per-item shape of one field, e.g. FieldSpec("float16", (384, 40, 40))."""

    dtype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> FieldSpec:
        return cls(str(obj["dtype"]), tuple(int(s) for s in obj["shape"]))


@dataclass
class Shard:
    """One shard as produced by a stream.

    Attributes:
        index: position of the shard in the store.
        ids: ids of the n items it holds.
        arrays: field -> array (n, *spec.shape).
        skipped: inputs of this chunk that were left out, each {"id", "path", "problem"}.
    """

    index: int
    ids: list[str]
    arrays: dict[str, np.ndarray]
    skipped: list[dict[str, str]] = field(default_factory=list)


class ArrayStream(Protocol):
    """A lazy producer of shards, consumed by `write_store`.

    Attributes:
        fields: name -> FieldSpec of every field each shard holds.
        num_shards: how many shards the stream makes.
        attrs: JSON-serialisable facts stored with the data (backbone, stride, class names, ...).
        fingerprint: changes whenever the content would change; finished shards are reused only under the same one.
    """

    fields: Mapping[str, FieldSpec]
    num_shards: int
    attrs: Mapping[str, Any]
    fingerprint: str

    def iter_shards(self, todo: Sequence[int]) -> Iterator[Shard]:
        """Yields the shards whose index is in `todo`, in that order."""
        ...


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (parameters, upstream fingerprints, file lists)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _shard_dir(root: Path, index: int) -> Path:
    return root / f"shard-{index:05d}"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _check_shard(shard: Shard, fields: Mapping[str, FieldSpec]) -> None:
    missing = set(fields) - set(shard.arrays)
    if missing:
        raise StoreError(f"shard {shard.index} lacks fields {sorted(missing)}")
    for name, spec in fields.items():
        shape = tuple(shard.arrays[name].shape)
        if shape != (len(shard.ids), *spec.shape):
            raise StoreError(f"shard {shard.index} field {name!r}: shape {shape}, "
                             f"expected {(len(shard.ids), *spec.shape)}")


def _read_shard_info(folder: Path, fields: Mapping[str, FieldSpec]) -> dict[str, Any] | None:
    """The shard's ids.json if the shard is complete and matches `fields`, else None."""
    try:
        info = json.loads((folder / "ids.json").read_text())
        if not isinstance(info.get("ids"), list) or not isinstance(info.get("skipped"), list):
            return None
        for name, spec in fields.items():
            arr = np.load(folder / f"{name}.npy", mmap_mode="r")
            if arr.shape != (len(info["ids"]), *spec.shape) or str(arr.dtype) != spec.dtype:
                return None
        return dict(info)
    except (OSError, ValueError, KeyError, EOFError, AttributeError):  # EOFError: np.load of an empty file
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a signal-0 probe; no permission still means alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dead_work_folders(parent: Path, name: str) -> None:
    """Work and `.old` folders of `name` left by processes that died (killed between a rename and its cleanup)."""
    pattern = re.compile(rf"\.{re.escape(name)}\.(?:tmp|old)-(\d+)(?:-rank\d+)?")
    for path in parent.glob(f".{glob.escape(name)}.*-*") if parent.is_dir() else ():
        match = pattern.fullmatch(path.name)
        if match and not pid_alive(int(match.group(1))):
            logger.info("Removing %s, left by a write that was killed", path)
            shutil.rmtree(path, ignore_errors=True)


def _tidy_staging(staging: Path, num_shards: int) -> None:
    """Removes whatever is not a shard of this stream or the meta file (temporaries of killed writes)."""
    keep = {_shard_dir(staging, i).name for i in range(num_shards)} | {META_FILE}
    for path in staging.iterdir():
        if path.name not in keep:
            logger.info("Removing %s from the staging folder before it becomes the store", path.name)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _remove_other_stagings(parent: Path, name: str, current: Path) -> None:
    """Staging folders of `name` under other fingerprints: abandoned writes a complete write made obsolete."""
    for path in parent.glob(f".{glob.escape(name)}.staging-*"):
        if path != current and path.is_dir():
            logger.info("Removing %s: an unfinished write of %s under another fingerprint", path, name)
            shutil.rmtree(path, ignore_errors=True)


def upstream_stores(stream: object) -> dict[str, StoreReader]:
    """The stores a stream reads: its attributes that are stores (`ShardStore`, or an online store computed where it
    is read), by attribute name."""
    return {key: value for key, value in getattr(stream, "__dict__", {}).items() if isinstance(value, StoreReader)}


def _lineage_attrs(stream: ArrayStream, root: Path) -> dict[str, Any]:
    """The stream's attrs, with the ingestion fingerprint of the stores it reads where it does not set one."""
    attrs = dict(stream.attrs)
    if INGESTION in attrs:
        return attrs
    upstream = upstream_stores(stream)
    if upstream:
        check_same_ingestion(**upstream, what=f"the stores {root.name} is made from")
        found = {store.attrs.get(INGESTION) for store in upstream.values()} - {None}
        if found:
            attrs[INGESTION] = found.pop()
    return attrs


def write_store(stream: ArrayStream, root: Path, staging_parent: Path | None = None, progress: bool = True) -> None:
    """Writes `stream` into `root`, resuming finished shards of an earlier write with the same fingerprint; a complete
    store of that fingerprint at `root` is kept as it is.

    In a process group (torchrun, `unseg.core.distributed`) every process calls it with its own copy of the stream:
    each computes and writes the shards `distributed.my_share` gives it into the common staging folder, and rank 0
    makes the store once all are written, so the store is the one a single process would write, byte for byte. The
    processes first check that their streams have one fingerprint (else all stop: their inputs differ).

    Args:
        stream: the producer; see `ArrayStream`.
        root: target folder. If it holds a complete store, it is replaced only after the new one is complete.
        staging_parent: where unfinished writes live (default: root's parent); it must be on root's file system and
            stable across runs for a killed write to resume (versioned datasets pass their unversioned folder).
        progress: show a tqdm bar over shards (rank 0's shards only, in a process group).

    Raises:
        StoreError: a produced shard does not match the declared fields; the stores the stream reads come from
            different ingestions; the staging folder disappeared during the write (another process wrote the same
            store at the same time); a process of the group did not write its shards.
        DistributedMismatch: the processes of a group hold streams of different fingerprints.
    """
    from tqdm.auto import tqdm

    root = Path(root)
    check_same(f"the fingerprint of the stream written to {root}", stream.fingerprint)
    attrs = _lineage_attrs(stream, root)
    if broadcast_object(stored_fingerprint(root) == stream.fingerprint if is_main() else None):
        if is_main():
            logger.info("%s holds this data already (fingerprint %s): reused", root, stream.fingerprint)
            _set_attrs(root, attrs)
        barrier()
        return
    parent = Path(staging_parent or root.parent)
    staging = parent / f".{root.name}.staging-{stream.fingerprint}"
    infos: dict[int, dict[str, Any]] = {}
    if is_main():
        _remove_dead_work_folders(parent, root.name)
        staging.mkdir(parents=True, exist_ok=True)
        infos = _read_shard_infos(staging, stream)
        if infos:
            logger.info("Resuming %s: %d of %d shards already written", root, len(infos), stream.num_shards)
    # rank 0 says which shards are missing before any process writes one
    todo = broadcast_object([i for i in range(stream.num_shards) if i not in infos])
    mine = my_share(todo)
    work = parent / (f".{root.name}.tmp-{os.getpid()}" + (f"-rank{rank()}" if world_size() > 1 else ""))
    bar = tqdm(total=len(mine), unit="shard", disable=not (progress and is_main()), desc=root.name)
    shards = stream.iter_shards(mine)
    try:
        for shard in shards:
            _check_shard(shard, stream.fields)
            tmp = work / _shard_dir(work, shard.index).name
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for name, spec in stream.fields.items():
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(shard.arrays[name], dtype=spec.dtype))
            infos[shard.index] = {"ids": list(shard.ids), "skipped": list(shard.skipped)}
            (tmp / "ids.json").write_text(json.dumps(infos[shard.index]))
            final = _shard_dir(staging, shard.index)
            try:
                if not staging.is_dir():
                    raise FileNotFoundError(staging)
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
            except FileNotFoundError as err:  # Kedro would report it as "a file with the same name already exists"
                raise StoreError(f"{root}: the staging folder {staging} disappeared during the write; another process "
                                 "wrote this store at the same time (one `kedro run` per project at a time)") from err
            bar.update(1)
    finally:
        getattr(shards, "close", lambda: None)()  # a failed write stops the producer now (e.g. its worker processes)
        bar.close()
        shutil.rmtree(work, ignore_errors=True)
    barrier()  # every process has written its shards
    if is_main():
        if world_size() > 1:
            infos = _read_shard_infos(staging, stream)
        _finish_store(stream, root, parent, staging, infos, attrs)
    barrier()  # the store is complete for every process


def _read_shard_infos(staging: Path, stream: ArrayStream) -> dict[int, dict[str, Any]]:
    """Index -> {"ids", "skipped"} of the complete shards in the staging folder."""
    infos = {}
    for i in range(stream.num_shards):
        info = _read_shard_info(_shard_dir(staging, i), stream.fields)
        if info is not None:
            infos[i] = info
    return infos


def _finish_store(stream: ArrayStream, root: Path, parent: Path, staging: Path, infos: dict[int, dict[str, Any]],
                  attrs: dict[str, Any]) -> None:
    """The staging folder, all shards written, becomes the store at `root` (its meta file written last)."""
    missing = [i for i in range(stream.num_shards) if i not in infos]
    if missing:
        raise StoreError(f"{root}: the stream did not produce shards {missing[:10]}")
    ordered = [infos[i] for i in range(stream.num_shards)]
    meta = {
        "format_version": FORMAT_VERSION,
        "fingerprint": stream.fingerprint,
        "fields": {name: spec.to_json() for name, spec in stream.fields.items()},
        "shard_counts": [len(info["ids"]) for info in ordered],
        "ids": [image_id for info in ordered for image_id in info["ids"]],
        "skipped": [entry for info in ordered for entry in info["skipped"]],
        "attrs": attrs,
    }
    _tidy_staging(staging, stream.num_shards)
    _atomic_write_text(staging / META_FILE, json.dumps(meta, indent=1))
    if root.exists():
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        os.replace(root, old)
        os.replace(staging, root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        root.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, root)
    _remove_other_stagings(parent, root.name, staging)


def stored_fingerprint(root: Path) -> str | None:
    """The fingerprint of the complete store (or store record) at `root`, None where there is none."""
    try:
        return str(json.loads((Path(root) / META_FILE).read_text())["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _set_attrs(root: Path, attrs: dict[str, Any]) -> None:
    """Rewrites a complete store's attrs (its lineage, when data of the same fingerprint is reused by a run whose
    ingestion differs elsewhere: e.g. the val images, unchanged, of an ingestion where a train file changed)."""
    meta = json.loads((root / META_FILE).read_text())
    if meta["attrs"] != attrs:
        meta["attrs"] = attrs
        _atomic_write_text(root / META_FILE, json.dumps(meta, indent=1))


def write_pooled(stream: ArrayStream, record: Path, pool: Path, progress: bool = True) -> Path:
    """Writes `stream` content-addressed into `pool/<fingerprint>` (reused when complete) and a record of it at
    `record`: a folder with the store's `meta.json` (its attrs are this write's, with this run's lineage), whose
    "data" entry is the store's path relative to the record. In a process group every process writes its shares of
    the data (`write_store`) and rank 0 alone the record.

    Returns:
        the folder that holds the data.
    """
    data = Path(pool) / stream.fingerprint
    write_store(stream, data, staging_parent=pool, progress=progress)
    if is_main():
        meta = json.loads((data / META_FILE).read_text())
        meta["data"] = os.path.relpath(data, record)
        record = Path(record)
        tmp = record.with_name(f".{record.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))  # the folder is renamed into place whole
        if record.exists():
            shutil.rmtree(record)
        os.replace(tmp, record)
    barrier()  # the record exists for every process
    return data


class StoreReader:
    """The reading methods every store shares, built on what a store defines: `root`, `fields`, `ids`,
    `shard_counts`, `attrs`, `fingerprint` and `shard(index, names)`. A subclass calls `_index_items` once its ids and
    shard counts are set. Stores: `ShardStore` (on disk) and `unseg.core.online.OnlineStore` (computed where read).
    """

    root: Any
    fields: dict[str, FieldSpec]
    ids: list[str]
    shard_counts: list[int]
    attrs: dict[str, Any]
    fingerprint: str
    online: bool = False  # whether shards are computed when read (a backbone in this process) instead of stored

    def _index_items(self) -> None:
        self._starts = np.concatenate([[0], np.cumsum(self.shard_counts)]).astype(np.int64)
        self._position = {image_id: i for i, image_id in enumerate(self.ids)}

    def shard(self, index: int, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Field -> array (n, *shape) of shard `index`."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_shards(self) -> int:
        return len(self.shard_counts)

    def shard_ids(self, index: int) -> list[str]:
        return self.ids[self._starts[index]:self._starts[index + 1]]

    def locate(self, key: int | str) -> tuple[int, int]:
        """(shard, offset) of an item given by position or id."""
        position = self._position[key] if isinstance(key, str) else int(key)
        if not 0 <= position < len(self):
            raise IndexError(f"{self.root}: item {key} out of range [0, {len(self)})")
        shard = int(np.searchsorted(self._starts, position, side="right")) - 1
        return shard, position - int(self._starts[shard])

    def item(self, key: int | str, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Field -> array (*shape) of one item, by position or by id."""
        shard, offset = self.locate(key)
        return {name: np.array(arr[offset]) for name, arr in self.shard(shard, names).items()}

    def iter_shards(self, names: Sequence[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        for index in range(self.num_shards):
            yield self.shard(index, names)

    def sample_vectors(self, name: str, count: int, seed: int, channels_last: bool = False,
                       item_share: int = 4, read_budget: int = 2**30) -> np.ndarray:
        """A random sample of the channel vectors of a dense field that reads only the items it samples from.

        A field of at most `read_budget` bytes is read whole: the draw is uniform over all its pixels. A larger one
        is sampled from a random subset of items, large enough that the sample takes at most 1/`item_share` of their
        pixels, uniformly among their pixels; so the items read grow with `count`, not with the store: 1M vectors of
        40x40 grids read 2,500 items, whether the store holds 5,000 or 50,000.

        Args:
            name: the field, of shape (C, h, w), or (h, w, C) with channels_last (images).
            count: vectors wanted; all of them when the store holds fewer.
            seed: seeds the draw.
            channels_last: the field's layout.
            item_share: at most 1/item_share of a sampled item's pixels are taken, on average (large fields).
            read_budget: bytes of the field below which every item is read.

        Returns:
            float32 array (min(count, total), C), in store order.
        """
        spec = self.fields[name]
        if len(spec.shape) != 3:
            raise StoreError(f"{self.root}: field {name!r} has shape {spec.shape}, expected (C, h, w) or (h, w, C)")
        channels = spec.shape[-1] if channels_last else spec.shape[0]
        per_item = int(np.prod(spec.shape)) // channels
        rng = np.random.default_rng(seed)
        field_bytes = len(self) * int(np.prod(spec.shape)) * np.dtype(spec.dtype).itemsize
        num_items = len(self) if field_bytes <= read_budget else min(len(self), -(-count * item_share // per_item))
        items = (np.arange(len(self)) if num_items == len(self)
                 else np.sort(rng.choice(len(self), size=num_items, replace=False)))
        total = num_items * per_item
        flat = np.sort(rng.choice(total, size=min(count, total), replace=False))
        chosen, pixel = np.divmod(flat, per_item)
        out = np.empty((len(flat), channels), dtype=np.float32)
        for k in np.unique(chosen):  # one item at a time keeps memory at one item
            rows = np.nonzero(chosen == k)[0]
            shard, offset = self.locate(int(items[k]))
            block = np.asarray(self.shard(shard, [name])[name][offset])
            block = block.reshape(per_item, channels) if channels_last else block.reshape(channels, per_item).T
            out[rows] = block[pixel[rows]]
        return out


@dataclass
class ShardStore(StoreReader):
    """Read access to a store written by `write_store`. Nothing is loaded until asked for."""

    root: Path
    data_root: Path = field(init=False)  # where the shards are: root, or the pooled store a record names
    fields: dict[str, FieldSpec] = field(init=False)
    ids: list[str] = field(init=False)
    shard_counts: list[int] = field(init=False)
    skipped: list[dict[str, str]] = field(init=False)
    attrs: dict[str, Any] = field(init=False)
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        meta_path = self.root / META_FILE
        if not meta_path.is_file():
            raise StoreError(f"{self.root}: no {META_FILE}; not a store, or its write did not finish")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as err:
            raise StoreError(f"{meta_path}: unreadable ({err})") from err
        if meta.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{meta_path}: format_version {meta.get('format_version')}, expected {FORMAT_VERSION}")
        self.fields = {name: FieldSpec.from_json(spec) for name, spec in meta["fields"].items()}
        self.ids = list(meta["ids"])
        self.shard_counts = [int(c) for c in meta["shard_counts"]]
        self.skipped = list(meta["skipped"])
        self.attrs = dict(meta["attrs"])
        self.fingerprint = str(meta["fingerprint"])
        self.data_root = self.root / meta["data"] if meta.get("data") else self.root
        if self.data_root != self.root and stored_fingerprint(self.data_root) != self.fingerprint:
            raise StoreError(f"{meta_path} records data in {os.path.normpath(self.data_root)}, which is missing or "
                             f"holds other data (removed by pruning?); run the pipeline that makes it again")
        self._index_items()

    def __repr__(self) -> str:
        return f"ShardStore({str(self.root)!r}, items={len(self)}, fields={list(self.fields)})"

    def shard(self, index: int, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Field -> memory-mapped array (n, *shape) of shard `index`."""
        if not 0 <= index < self.num_shards:
            raise IndexError(f"{self.root}: shard {index} out of range [0, {self.num_shards})")
        folder = _shard_dir(self.data_root, index)
        return {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in (names or self.fields)}


# ----------------------------------------------------------------------------------------------------------- lineage
def _describe(name: str, store: StoreReader) -> str:
    return (f"{name} ({store.root}: {len(store)} items, split {store.attrs.get('split')}, "
            f"ingestion {store.attrs.get(INGESTION) or 'not recorded'})")


def check_same_ingestion(*, what: str = "the input stores", **stores: StoreReader | None) -> None:
    """Checks that stores which must belong together descend from one ingestion (the same `attrs["ingestion"]`).

    Args:
        what: how the message names the stores as a group (e.g. "extract_features' inputs").
        stores: name -> store; None (a store that was never saved, loaded with missing_ok) is left out. Stores that
            all lack the attribute (written by hand, or before it was recorded) pass; some with and some without
            do not.

    Raises:
        StoreError: naming every store (folder, items, split, ingestion) and how to make them agree.
    """
    present = {name: store for name, store in stores.items() if store is not None}
    found = {store.attrs.get(INGESTION) for store in present.values()}
    if len(found) <= 1:
        return
    listing = "; ".join(_describe(name, store) for name, store in present.items())
    raise StoreError(f"{what} do not come from one ingestion: {listing}. Every store records the fingerprint of the "
                     "index and settings it was made from; these differ (another data set or other settings, files "
                     "changed in between, or a run that failed after saving only some of its outputs, which leaves "
                     "them as the latest versions beside older ones). Run the pipelines that make them again, from "
                     "ingestion (e.g. `kedro run --pipelines features`).")


def check_made_from(derived_name: str, derived: StoreReader, source_name: str, source: StoreReader,
                    key: str = "images") -> None:
    """Checks that `derived` was made from `source`: its attrs[key] (recorded at write time) is source's fingerprint.

    Raises:
        StoreError: naming both stores and both fingerprints. A derived store that does not record `key` passes.
    """
    recorded = derived.attrs.get(key)
    if recorded is not None and recorded != source.fingerprint:
        raise StoreError(f"{derived_name} ({derived.root}) was made from {key} with fingerprint {recorded}, but "
                         f"{source_name} ({source.root}) has fingerprint {source.fingerprint}: they do not belong "
                         f"together (the latest versions of the two come from different runs); run the pipeline that "
                         f"makes {derived_name} again")


def check_split(name: str, store: StoreReader, expected: str) -> None:
    """Checks that a store holds the split its consumer expects (attrs["split"], where recorded).

    Raises:
        StoreError: naming the store, its split and the expected one.
    """
    split = store.attrs.get("split")
    if split is not None and split != expected:
        raise StoreError(f"{name} ({store.root}) holds the {split!r} split, expected {expected!r}")


def check_model_ingestion(model: Mapping[str, Any], store: StoreReader) -> None:
    """Checks that a model fitted on a train store (recording its `INGESTION` key) meets a store of that ingestion.

    Raises:
        StoreError: both record an ingestion and they differ. A model or store that records none passes.
    """
    fitted, found = model.get(INGESTION), store.attrs.get(INGESTION)
    if fitted is not None and found is not None and fitted != found:
        raise StoreError(f"the model was fitted on the train split of ingestion {fitted}, but {store.root} comes from "
                         f"ingestion {found}: they do not belong together (another data set or settings, or the latest "
                         "versions of different runs); run the pipeline that fits the model again")
