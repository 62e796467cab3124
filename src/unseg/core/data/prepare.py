"""Preparation: decode, validate and bring every image of a split to the evaluation resolution.

Per the shared protocol (PiCIE [0], PriMaPs [1]): resize the shorter side to `resize` (bilinear; labels nearest
neighbour), then centre-crop `crop` x `crop`. The result is an `ArrayStream` of uint8 images (and labels where the
split has them), written shard by shard into a store; bad files are raised or skipped per `on_bad_file`.

[0] https://arxiv.org/abs/2103.17070  [1] https://arxiv.org/abs/2404.16818
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from unseg.core.data.sources import BadFileError, BadFiles, DatasetConfig, load_image, load_label
from unseg.core.store import FieldSpec, Shard, fingerprint

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


@dataclass
class PreparedImageStream:
    """Images (and labels) of one split at the evaluation resolution, produced shard by shard.

    Fields: image uint8 (crop, crop, 3); label (crop, crop) of config.label_dtype when the split has labels.
    """

    table: pd.DataFrame
    config: DatasetConfig
    shard_size: int = 64
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
        self.fingerprint = fingerprint(self.attrs, self.config.on_bad_file, self.shard_size,
                                       self.table[["image_id", "image_path", "label_path"]].values.tolist())

    @property
    def num_shards(self) -> int:
        return (len(self.table) + self.shard_size - 1) // self.shard_size

    def iter_shards(self, todo: Sequence[int]) -> Iterator[Shard]:
        cfg = self.config
        for index in todo:
            chunk = self.table.iloc[index * self.shard_size:(index + 1) * self.shard_size]
            bad = BadFiles(cfg.on_bad_file)
            ids, images, labels = [], [], []
            for row in chunk.itertuples(index=False):
                try:
                    image = load_image(row.image_path)
                    label = load_label(row.label_path, cfg) if self.has_labels else None
                except BadFileError as err:
                    bad.report(row.image_id, err.path, err.problem)
                    continue
                if label is not None and label.shape != image.shape[:2]:
                    bad.report(row.image_id, row.label_path,
                               f"label size {label.shape[1]}x{label.shape[0]} differs from image size "
                               f"{image.shape[1]}x{image.shape[0]}")
                    continue
                ids.append(row.image_id)
                images.append(resize_crop(image, cfg.resize, cfg.crop, nearest=False))
                if label is not None:
                    labels.append(resize_crop(label, cfg.resize, cfg.crop, nearest=True))
            arrays = {"image": _stack(images, self.fields["image"])}
            if self.has_labels:
                arrays["label"] = _stack(labels, self.fields["label"])
            yield Shard(index, ids, arrays, bad.skipped)


def _stack(arrays: list[np.ndarray], spec: FieldSpec) -> np.ndarray:
    if not arrays:
        return np.zeros((0, *spec.shape), dtype=spec.dtype)
    return np.stack(arrays).astype(spec.dtype)
