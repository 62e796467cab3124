"""Preparation: decode, validate and bring every image of a split to the evaluation resolution.

Per the shared protocol (PiCIE [0], PriMaPs [1]): resize the shorter side to `resize` (bilinear; labels nearest
neighbour), then centre-crop `crop` x `crop`. The result is an `ArrayStream` of uint8 images (and labels where the
split has them), written shard by shard into a store; bad files are raised or skipped per `on_bad_file`.

[0] https://arxiv.org/abs/2103.17070  [1] https://arxiv.org/abs/2404.16818
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from unseg.core.data.sources import BadFileError, BadFiles, DatasetConfig, load_image, load_label, size_mismatch
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


def ingestion_fingerprint(index: pd.DataFrame, config: DatasetConfig, shard_size: int) -> str:
    """The identity of one ingestion: the whole index (every split, files' sizes and mtimes) and the settings.

    Both prepared stores record it (attrs["ingestion"]), and so does every store made from them, so consumers can
    check that their inputs come from one ingestion (`unseg.core.store.check_same_ingestion`).
    """
    return fingerprint(asdict(config), shard_size, DECODING, file_identity(index))


@dataclass
class PreparedImageStream:
    """Images (and labels) of one split at the evaluation resolution, produced shard by shard.

    Fields: image uint8 (crop, crop, 3); label (crop, crop) of config.label_dtype when the split has labels.
    `ingestion`: the `ingestion_fingerprint` of the whole index (shared by the splits); default: this split's own.
    The fingerprint covers each file's size and mtime_ns, so a file replaced under its name is never resumed from.

    A split whose every image is skipped as bad (on_bad_file=skip) is an error (`iter_shards`): nothing downstream can
    use an empty store. Its empty shards are held back until an image is kept, so such a split leaves no shard behind
    and a rerun finds it empty again.
    """

    table: pd.DataFrame
    config: DatasetConfig
    shard_size: int = 64
    ingestion: str | None = None
    fields: dict[str, FieldSpec] = field(init=False)
    attrs: dict[str, Any] = field(init=False)
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        if self.table.empty:
            raise ValueError("no images to prepare: the split's index is empty")
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
        """The shards in `todo`; empty ones are held back until one holds an image.

        Raises:
            BadFileError: (naming the split's folder) every image of the split was skipped as bad. Known only when
                `todo` is every shard; a resumed write leaves that check to `ingestion.report_ingestion`.
        """
        held: list[Shard] = []
        kept = 0
        for index in todo:
            shard = self._prepare(index)
            if not kept and not shard.ids:
                held.append(shard)
                continue
            kept += len(shard.ids)
            yield from held
            held.clear()
            yield shard
        if held and set(todo) == set(range(self.num_shards)):
            raise self._empty_split([entry for shard in held for entry in shard.skipped])
        yield from held

    def _empty_split(self, skipped: list[dict[str, str]]) -> BadFileError:
        paths = [os.path.dirname(str(p)) for p in self.table["image_path"]]
        folder = os.path.commonpath(paths) if all(paths) else paths[0]
        examples = "; ".join(f"{entry['path']}: {entry['problem']}" for entry in skipped[:3])
        return BadFileError(folder, f"empty {self.attrs['split']} split: all {len(skipped)} images were skipped as bad "
                                    f"when decoded (dataset.on_bad_file=skip), e.g. {examples}")

    def _prepare(self, index: int) -> Shard:
        cfg = self.config
        chunk = self.table.iloc[index * self.shard_size:(index + 1) * self.shard_size]
        bad = BadFiles(cfg.on_bad_file)
        ids, images, labels = [], [], []
        for row in chunk.itertuples(index=False):
            try:
                image = load_image(row.image_path, cfg.exif)
                label = load_label(row.label_path, cfg) if self.has_labels else None
            except BadFileError as err:
                bad.report(row.image_id, err.path, err.problem)
                continue
            if label is not None and label.shape != image.shape[:2]:
                bad.report(row.image_id, row.label_path, size_mismatch(
                    (label.shape[1], label.shape[0]), row.image_path, (image.shape[1], image.shape[0]), cfg.exif))
                continue
            ids.append(row.image_id)
            images.append(resize_crop(image, cfg.resize, cfg.crop, nearest=False))
            if label is not None:
                labels.append(resize_crop(label, cfg.resize, cfg.crop, nearest=True))
        arrays = {"image": _stack(images, self.fields["image"])}
        if self.has_labels:
            arrays["label"] = _stack(labels, self.fields["label"])
        return Shard(index, ids, arrays, bad.skipped)


def _stack(arrays: list[np.ndarray], spec: FieldSpec) -> np.ndarray:
    if not arrays:
        return np.zeros((0, *spec.shape), dtype=spec.dtype)
    return np.stack(arrays).astype(spec.dtype)
