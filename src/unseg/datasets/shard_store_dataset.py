"""Kedro dataset over `unseg.core.store`: saves an `ArrayStream` shard by shard, loads a lazy `ShardStore`."""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractVersionedDataset, Version

from unseg.core.store import ArrayStream, ShardStore, write_pooled, write_store

POOL = ".stores"  # content-addressed stores inside a versioned dataset's folder: .stores/<fingerprint>/

logger = logging.getLogger(__name__)


class ShardStoreDataset(AbstractVersionedDataset[ArrayStream, ShardStore]):
    """A folder of fp16/uint8 shards with an index (see `unseg.core.store`), optionally versioned.

    Saving consumes the stream one shard at a time (memory stays at one shard); a killed save resumes at the next
    run from the finished shards of the same fingerprint. Versioned, the data is content-addressed: it lives in
    `<filepath>/.stores/<fingerprint>/` and each version is a small record naming it, so a save whose stream has the
    fingerprint of a stored one computes and writes nothing but the record (`unseg.core.store.write_pooled`).
    Unversioned, a store of the same fingerprint at `filepath` is kept as it is.
    Loading returns a `ShardStore` that reads items, shards or pixel samples through memory maps; with
    `missing_ok: true` a store that was never saved loads as None (the evaluation reads the predictions of methods
    whose pipelines may not have run that way).

    Example catalog entry::

        feat_{split}:
          type: unseg.datasets.ShardStoreDataset
          filepath: data/04_feature/feat_{split}
          versioned: true
    """

    def __init__(self, filepath: str, version: Version | None = None, progress: bool = True,
                 missing_ok: bool = False, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(filepath=PurePosixPath(filepath), version=version)
        self._progress = progress
        self._missing_ok = missing_ok
        self.metadata = metadata

    def load(self) -> ShardStore | None:
        if self._missing_ok and not self._exists():
            logger.info("%s: no store saved yet, loaded as None", self._filepath)
            return None
        return ShardStore(Path(self._get_load_path()))

    def save(self, data: ArrayStream) -> None:
        unversioned = Path(self._filepath)
        if self._version is None:
            write_store(data, unversioned, staging_parent=unversioned.parent, progress=self._progress)
        else:
            write_pooled(data, Path(self._get_save_path()), unversioned / POOL, progress=self._progress)

    def _exists(self) -> bool:
        try:
            return (Path(self._get_load_path()) / "meta.json").is_file()
        except Exception:  # noqa: BLE001 - no version yet
            return False

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "version": self._version, "missing_ok": self._missing_ok}

    def preview(self, nrows: int = 5) -> dict[str, Any]:
        """A table of the store's fields and first ids for kedro-viz."""
        store = self.load()
        if store is None:
            return {"index": [], "columns": ["dtype", "shape"], "data": [], "items": 0, "first_ids": []}
        return {
            "index": list(store.fields),
            "columns": ["dtype", "shape"],
            "data": [[spec.dtype, str(spec.shape)] for spec in store.fields.values()],
            "items": len(store),
            "first_ids": store.ids[:nrows],
        }
