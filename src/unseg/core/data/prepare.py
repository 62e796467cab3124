"""Preparation: decode, validate and bring every image of a split to the evaluation resolution.

Per the shared protocol (PiCIE [0], PriMaPs [1]): resize the shorter side to `resize` (bilinear; labels nearest
neighbour), then centre-crop `crop` x `crop`. The result is an `ArrayStream` of uint8 images (and labels where the
split has them), written shard by shard into a store; bad files are raised or skipped per `on_bad_file`.

Decoding is the slow part of ingestion (COCO-Stuff: ~50k JPEGs, ~20-25 min in one thread), so the stream can hand
whole shards to worker processes (`PreparedImageStream.num_workers`). Every shard is made by one function,
`prepare_shard`, in this process or in a worker alike, and the shards come back in order: the store does not depend
on the number of workers.

[0] https://arxiv.org/abs/2103.17070  [1] https://arxiv.org/abs/2404.16818
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from logging.handlers import QueueHandler, QueueListener
from multiprocessing.context import BaseContext
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from unseg.core.data.sources import BadFileError, BadFiles, DatasetConfig, load_image, load_label, size_mismatch
from unseg.core.distributed import cpus_per_process
from unseg.core.store import INGESTION, FieldSpec, Shard, fingerprint

logger = logging.getLogger(__name__)


def resize_crop(array: np.ndarray, resize: int, crop: int, nearest: bool) -> np.ndarray:
    """Resizes the shorter side to `resize`, then centre-crops `crop` x `crop`.

    Args:
        array: uint8 image (H, W, 3) or label (H, W) (any integer dtype).
        resize: target of the shorter side.
        crop: side of the centre crop (<= resize).
        nearest: nearest-neighbour (labels) instead of bilinear (images).

    Returns:
        (crop, crop, 3) or (crop, crop), same dtype as `array`.
    """
    height, width = array.shape[:2]
    scale = resize / min(height, width)
    new_w, new_h = max(crop, round(width * scale)), max(crop, round(height * scale))
    if array.ndim == 2:
        img = Image.fromarray(array.astype(np.int32), mode="I")
    else:
        img = Image.fromarray(array)
    img = img.resize((new_w, new_h), Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR)
    top, left = (new_h - crop) // 2, (new_w - crop) // 2
    out = np.asarray(img)[top:top + crop, left:left + crop]
    return out.astype(array.dtype)


def file_identity(table: pd.DataFrame) -> list[list[Any]]:
    """Per row: image_id, split, image_path, label_path and each file's [size, mtime_ns] (None when missing).

    What identifies the content a prepared store was made from, at a stat per file (no reading): a file replaced under
    the same name changes its size or mtime. A content hash would also catch a same-size replacement that keeps the
    old mtime (rsync -t/cp -p of another file of the same size), at the cost of reading every file on every run.
    """

    def stat(path: str) -> list[int] | None:
        if not path:
            return None
        try:
            info = os.stat(path)
        except OSError:
            return None
        return [info.st_size, info.st_mtime_ns]

    return [[row.image_id, row.split, row.image_path, row.label_path, stat(row.image_path), stat(row.label_path)]
            for row in table.itertuples(index=False)]


# How files become pixels (16-bit scaling, EXIF orientation, alpha): part of every prepared store's identity, so a
# change of decoding never resumes from shards written the old way. Raise it with any such change.
DECODING = 2


# `auto` stops at 8 workers (more can be asked for): 2 shards in flight per worker (~26 MB each at crop 320 with 64
# images), and the one process that writes them spends ~1/20 of the decode time per shard (measured), so it saturates
# at roughly 15-20 workers.
MAX_AUTO_WORKERS = 8


def decode_workers(value: int | str) -> int:
    """The number of decode worker processes that `ingestion.num_workers` asks for.

    Args:
        value: an integer >= 0 (0: decode in this process), or "auto": min(8, the CPUs this process may use; under
            torchrun its share of the machine's).

    Raises:
        ValueError: anything else, naming the valid values.
    """
    if value == "auto":
        return min(MAX_AUTO_WORKERS, cpus_per_process())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"num_workers must be an integer >= 0 (0: decode in this process) or 'auto', got {value!r}")
    return value


def ingestion_fingerprint(index: pd.DataFrame, config: DatasetConfig, shard_size: int) -> str:
    """The identity of one ingestion: the whole index (every split, files' sizes and mtimes) and the settings.

    Both prepared stores record it (attrs["ingestion"]), and so does every store made from them, so consumers can
    check that their inputs come from one ingestion (`unseg.core.store.check_same_ingestion`).
    """
    return fingerprint(asdict(config), shard_size, DECODING, file_identity(index))


Row = tuple[Any, str, str]  # image_id, image_path, label_path ("" where the split has no labels)


@dataclass
class PreparedImageStream:
    """Images (and labels) of one split at the evaluation resolution, produced shard by shard.

    Fields: image uint8 (crop, crop, 3); label (crop, crop) of config.label_dtype when the split has labels.
    `ingestion`: the `ingestion_fingerprint` of the whole index (shared by the splits); default: this split's own.
    The fingerprint covers each file's size and mtime_ns, so a file replaced under its name is never resumed from.
    `num_workers`: worker processes that decode whole shards (0: in this process; see `decode_workers`). Not part of
    the fingerprint: the shards are the same, byte for byte, in the same order, whatever the number.

    A split whose every image is skipped as bad (on_bad_file=skip) is an error (`iter_shards`): nothing downstream can
    use an empty store. Its empty shards are held back until an image is kept, so such a split leaves no shard behind
    and a rerun finds it empty again.
    """

    table: pd.DataFrame
    config: DatasetConfig
    shard_size: int = 64
    ingestion: str | None = None
    num_workers: int = 0
    fields: dict[str, FieldSpec] = field(init=False)
    attrs: dict[str, Any] = field(init=False)
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        if self.table.empty:
            raise ValueError("no images to prepare: the split's index is empty")
        decode_workers(self.num_workers)  # "auto" is resolved by the caller: here only integers >= 0
        crop = self.config.crop
        self.has_labels = bool((self.table["label_path"] != "").all())
        self.fields = {"image": FieldSpec("uint8", (crop, crop, 3))}
        if self.has_labels:
            self.fields["label"] = FieldSpec(self.config.label_dtype, (crop, crop))
        self.attrs = {"split": str(self.table["split"].iloc[0]), "resize": self.config.resize, "crop": crop,
                      "num_classes": self.config.num_classes, "ignore_index": self.config.ignore_index,
                      "class_names": self.config.names, "thing_classes": list(self.config.thing_classes or ()),
                      "stuff_classes": list(self.config.stuff_classes or ())}
        self.fingerprint = fingerprint(self.attrs, self.config.on_bad_file, self.shard_size, DECODING,
                                       file_identity(self.table))
        self.attrs[INGESTION] = self.ingestion or ingestion_fingerprint(self.table, self.config, self.shard_size)

    @property
    def num_shards(self) -> int:
        return (len(self.table) + self.shard_size - 1) // self.shard_size

    def iter_shards(self, todo: Sequence[int]) -> Iterator[Shard]:
        """The shards in `todo`, in that order; empty ones are held back until one holds an image.

        With `num_workers`, at most 2 x num_workers shards are decoded ahead of the one yielded. Closing the
        generator (the consumer stops early or fails) cancels what is queued and shuts the workers down.

        Raises:
            BadFileError: (naming the file) a bad file under on_bad_file=raise, from a worker as from this process;
                (naming the split's folder) every image of the split was skipped as bad. Known only when `todo` is
                every shard; a resumed write leaves that check to `ingestion.report_ingestion`.
        """
        held: list[Shard] = []
        kept = 0
        shards = self._produce(list(todo))
        try:
            for shard in shards:
                if not kept and not shard.ids:
                    held.append(shard)
                    continue
                kept += len(shard.ids)
                yield from held
                held.clear()
                yield shard
        finally:
            shards.close()  # a consumer that stops early or fails: the workers go at once, not when collected
        if held and set(todo) == set(range(self.num_shards)):
            raise self._empty_split([entry for shard in held for entry in shard.skipped])
        yield from held

    def _produce(self, todo: list[int]) -> Iterator[Shard]:
        workers = min(self.num_workers, len(todo))
        if workers and multiprocessing.current_process().daemon:
            logger.warning("decoding in this process: a daemonic process (a multiprocessing.Pool worker) cannot start "
                           "the %d decode workers asked for", workers)
            workers = 0
        if not workers:
            for index in todo:
                yield prepare_shard(index, self._rows(index), self.config, self.fields)
            return
        yield from _prepare_in_workers(((index, self._rows(index)) for index in todo), self.config, self.fields,
                                       workers)

    def _rows(self, index: int) -> list[Row]:
        """What a worker needs of shard `index`: its rows' ids and paths (not the table)."""
        chunk = self.table.iloc[index * self.shard_size:(index + 1) * self.shard_size]
        return list(zip(chunk["image_id"], chunk["image_path"], chunk["label_path"], strict=True))

    def _empty_split(self, skipped: list[dict[str, str]]) -> BadFileError:
        paths = [os.path.dirname(str(p)) for p in self.table["image_path"]]
        folder = os.path.commonpath(paths) if all(paths) else paths[0]
        examples = "; ".join(f"{entry['path']}: {entry['problem']}" for entry in skipped[:3])
        return BadFileError(folder, f"empty {self.attrs['split']} split: all {len(skipped)} images were skipped as bad "
                                    f"when decoded (dataset.on_bad_file=skip), e.g. {examples}")


def prepare_shard(index: int, rows: Sequence[Row], config: DatasetConfig, fields: Mapping[str, FieldSpec]) -> Shard:
    """Decodes, checks and resizes one shard's images (and labels where `fields` has "label").

    Args:
        index: the shard's position in the store.
        rows: (image_id, image_path, label_path) of its images, in store order.
        config: the dataset block (resize, crop, on_bad_file, label checks).
        fields: the stream's fields.

    Returns:
        The shard: ids of the images kept, arrays (n, *spec.shape), the files skipped as bad (on_bad_file=skip).

    Raises:
        BadFileError: the first bad file, under on_bad_file=raise.
    """
    bad = BadFiles(config.on_bad_file)
    has_labels = "label" in fields
    ids, images, labels = [], [], []
    for image_id, image_path, label_path in rows:
        try:
            image = load_image(image_path, config.exif)
            label = load_label(label_path, config) if has_labels else None
        except BadFileError as err:
            bad.report(image_id, err.path, err.problem)
            continue
        if label is not None and label.shape != image.shape[:2]:
            bad.report(image_id, label_path, size_mismatch(
                (label.shape[1], label.shape[0]), image_path, (image.shape[1], image.shape[0]), config.exif))
            continue
        ids.append(image_id)
        images.append(resize_crop(image, config.resize, config.crop, nearest=False))
        if label is not None:
            labels.append(resize_crop(label, config.resize, config.crop, nearest=True))
    arrays = {"image": _stack(images, fields["image"])}
    if has_labels:
        arrays["label"] = _stack(labels, fields["label"])
    return Shard(index, ids, arrays, bad.skipped)


def _stack(arrays: list[np.ndarray], spec: FieldSpec) -> np.ndarray:
    if not arrays:
        return np.zeros((0, *spec.shape), dtype=spec.dtype)
    return np.stack(arrays).astype(spec.dtype)


# ------------------------------------------------------------------------------------------------- decode workers
def _start_context() -> BaseContext:
    """How decode workers start: forkserver (spawn where there is none, e.g. Windows); never fork.

    The parent has torch (OpenMP pools), tqdm's monitor and Kedro/MLflow threads running: a fork copies whatever locks
    those threads hold at that moment (malloc, logging, OpenMP) and a child can deadlock on them (Python 3.12 warns).
    spawn is safe but starts an interpreter per worker that imports pandas, scipy and PIL again (~1.3 s each, per
    split) and reruns the parent's main script. The forkserver is a clean single-threaded process, started once per
    parent, that imports the main script and this module once (the preload, as Python's default preload plus this
    module) and forks each worker from that state in milliseconds.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["__main__", __name__])  # takes effect where the server is not running yet
        return context
    return multiprocessing.get_context("spawn")


@dataclass(frozen=True)
class _Failed:
    """A worker's BadFileError (on_bad_file=raise), sent back as data: its custom __init__ does not survive pickling,
    so raised in the worker it would break the pool instead of reaching the parent."""

    path: str
    problem: str


def _worker_prepare(index: int, rows: Sequence[Row], config: DatasetConfig,
                    fields: Mapping[str, FieldSpec]) -> Shard | _Failed:
    try:
        return prepare_shard(index, rows, config, fields)
    except BadFileError as err:
        return _Failed(err.path, err.problem)


def _worker_start(logs: Any, level: int) -> None:
    """Sends the worker's log records (skipped files, dropped alpha) to the parent, which logs them as its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops, then shuts the pool down
    root = logging.getLogger()
    root.handlers[:] = [QueueHandler(logs)]
    root.setLevel(level)


class _Relay(logging.Handler):
    """Hands a worker's record to the parent's logger of the same name, where that logger takes its level."""

    def emit(self, record: logging.LogRecord) -> None:
        target = logging.getLogger(record.name)
        if target.isEnabledFor(record.levelno):
            target.handle(record)


def _prepare_in_workers(tasks: Iterable[tuple[int, list[Row]]], config: DatasetConfig, fields: Mapping[str, FieldSpec],
                        num_workers: int) -> Iterator[Shard]:
    """`prepare_shard` of each task in `num_workers` processes, yielded in task order.

    A sliding window keeps 2 x num_workers shards submitted: the workers stay busy while the consumer writes, and
    memory stays bounded whatever the split's size. On exit (done, an error, or the generator closed) queued shards are
    cancelled and the pool is shut down, waiting for the shards already handed to a worker (about one per worker).
    """
    context = _start_context()
    logs = context.Queue()
    pool = ProcessPoolExecutor(num_workers, mp_context=context, initializer=_worker_start,
                               initargs=(logs, logging.getLogger("unseg").getEffectiveLevel()))
    relay = QueueListener(logs, _Relay())
    relay.start()
    pending = iter(tasks)
    window: deque[Future[Shard | _Failed]] = deque()
    try:
        for index, rows in islice(pending, 2 * num_workers):
            window.append(pool.submit(_worker_prepare, index, rows, config, fields))
        while window:
            result = window.popleft().result()
            task = next(pending, None)
            if task is not None:  # keep the window full while the consumer writes this shard
                window.append(pool.submit(_worker_prepare, *task, config, fields))
            if isinstance(result, _Failed):
                raise BadFileError(result.path, result.problem)
            yield result
    finally:
        for future in window:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)  # returns once every worker has exited
        relay.stop()  # after the workers: their last records are queued ahead of the stop mark
        logs.close()
        logs.join_thread()
