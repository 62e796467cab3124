"""Read-only Kedro dataset: the image files of a folder and its subfolders, as lazy PIL loaders.

Like kedro-datasets' PartitionedDataset over pillow.ImageDataset, which the predict pipeline used before, but it reads
only image files (by suffix, any case), lists the other files it leaves out, and says why a folder gives nothing:
it does not exist, it is a file, or it holds no image files (naming the suffixes looked for and what it holds).
PartitionedDataset said "No partitions found" for all of these.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

import fsspec
from kedro.io import AbstractDataset, DatasetError
from kedro.io.core import get_protocol_and_path
from PIL import Image

from unseg.core.data.sources import IMAGE_SUFFIXES

logger = logging.getLogger(__name__)
SHOWN = 10  # file names quoted in a message


def _open(fs: fsspec.AbstractFileSystem, path: str) -> Image.Image:
    return Image.open(io.BytesIO(fs.cat_file(path)))  # PIL owns the buffer: no file handle outlives the image


class ImageFolderDataset(AbstractDataset[None, dict[str, Any]]):
    """{"root": the folder, "images": {relative path: loader}, "ignored": [relative paths of the other files]}.

    A loader opens its image lazily (`with loader() as img: ...`); decoding errors surface there, image by image.

    Args:
        path: the folder (local, or any fsspec URL).
        suffixes: the file suffixes read as images, compared in lower case.

    Raises (on load):
        DatasetError: the folder does not exist, is a file, or holds no image file.

    Example catalog entry::

        predict_images:
          type: unseg.datasets.image_folder_dataset.ImageFolderDataset
          path: ${runtime_params:predict.input_dir,data/01_raw/predict}
    """

    def __init__(self, path: str, suffixes: Sequence[str] = IMAGE_SUFFIXES,
                 metadata: dict[str, Any] | None = None) -> None:
        protocol, fs_path = get_protocol_and_path(path)
        self._path = path
        self._root = PurePosixPath(fs_path)
        self._fs = fsspec.filesystem(protocol)
        self._suffixes = tuple(s.lower() for s in suffixes)
        self.metadata = metadata

    def load(self) -> dict[str, Any]:
        looked_for = "/".join(self._suffixes)
        if not self._fs.exists(str(self._root)):
            raise DatasetError(f"image folder {self._path} does not exist")
        if not self._fs.isdir(str(self._root)):
            raise DatasetError(f"image folder {self._path} is a file, not a folder")
        root = PurePosixPath(self._fs.info(str(self._root))["name"])  # as find() names files (local: absolute)
        files = sorted(str(PurePosixPath(f).relative_to(root)) for f in self._fs.find(str(root)))
        images = [f for f in files if PurePosixPath(f).suffix.lower() in self._suffixes]
        ignored = [f for f in files if PurePosixPath(f).suffix.lower() not in self._suffixes]
        if not images:
            held = f"it holds {len(files)} other files: {_names(files)}" if files else "it is empty"
            raise DatasetError(f"image folder {self._path} holds no image files ({looked_for}, any case); {held}")
        if ignored:
            logger.warning("%s: ignoring %d files that are not %s images: %s", self._path, len(ignored), looked_for,
                           _names(ignored))
        loaders = {f: functools.partial(_open, self._fs, str(root / f)) for f in images}
        return {"root": self._path, "images": loaders, "ignored": ignored}

    def save(self, data: None) -> None:
        raise DatasetError("ImageFolderDataset is read-only")

    def _exists(self) -> bool:
        return bool(self._fs.isdir(str(self._root)))

    def _describe(self) -> dict[str, Any]:
        return {"path": self._path, "suffixes": self._suffixes}


def _names(files: Sequence[str]) -> str:
    return ", ".join(files[:SHOWN]) + (f", ... ({len(files) - SHOWN} more)" if len(files) > SHOWN else "")
