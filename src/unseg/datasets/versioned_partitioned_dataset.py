"""Kedro dataset: a PartitionedDataset per version, so that a save never replaces or removes what earlier runs wrote.

kedro-datasets' PartitionedDataset cannot be versioned, and with `overwrite: true` every save deleted the whole
folder first. Here each save writes the partitions of one version, `<path>/<version>/<name>/<partition><suffix>`
(Kedro's layout of every versioned dataset, `<name>` being the last part of `path`; the version is the run's), and
loads read the newest version. A save goes to `<path>/<version>/<name>.partial/` first and is renamed to `<name>` once
every partition is written, so a run stopped while saving leaves no version that loads.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

import fsspec
from kedro.io import AbstractVersionedDataset, DatasetError, Version
from kedro.io.core import get_filepath_str, get_protocol_and_path
from kedro_datasets.partitions import PartitionedDataset


class VersionedPartitionedDataset(AbstractVersionedDataset[dict[str, Any], dict[str, Callable[[], Any]]]):
    """{partition id: data or a callable returning it} saved as one new version; load: the newest version's loaders.

    Args:
        path: the folder of the versions (local, or any fsspec URL).
        dataset: the dataset of one partition, as for PartitionedDataset (e.g. "pillow.ImageDataset").
        filename_suffix: the suffix of the partition files.
        version: given by Kedro with `versioned: true`, which this dataset requires.

    Example catalog entry::

        predict_outputs:
          type: unseg.datasets.versioned_partitioned_dataset.VersionedPartitionedDataset
          path: data/07_model_output/predict
          dataset: pillow.ImageDataset
          filename_suffix: .png
          versioned: true
    """

    def __init__(self, path: str, dataset: str | type | dict[str, Any], filename_suffix: str = "",
                 version: Version | None = None, metadata: dict[str, Any] | None = None) -> None:
        if version is None:
            raise DatasetError(f"VersionedPartitionedDataset {path}: needs `versioned: true` in its catalog entry")
        self._protocol, fs_path = get_protocol_and_path(path)
        self._fs = fsspec.filesystem(self._protocol)
        self._dataset, self._suffix = dataset, filename_suffix
        super().__init__(PurePosixPath(fs_path), version, exists_function=self._fs.exists, glob_function=self._fs.glob)
        self.metadata = metadata

    def _partitions(self, folder: PurePosixPath) -> PartitionedDataset:
        return PartitionedDataset(path=get_filepath_str(folder, self._protocol), dataset=self._dataset,
                                  filename_suffix=self._suffix)

    def load(self) -> dict[str, Callable[[], Any]]:
        return self._partitions(self._get_load_path()).load()

    def save(self, data: dict[str, Any]) -> None:
        final = self._get_save_path()  # raises if this version exists already
        partial = final.with_name(f"{final.name}.partial")
        self._fs.makedirs(str(partial), exist_ok=True)
        self._partitions(partial).save(data)
        self._fs.mv(str(partial), str(final), recursive=True)

    def _exists(self) -> bool:
        return bool(self._fs.exists(str(self._get_load_path())))

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._filepath), "dataset": str(self._dataset), "version": self._version}
