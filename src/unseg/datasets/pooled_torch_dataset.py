"""A versioned PyTorch state dict whose versions share one file per content: a run that saves the same weights
again (PiCIE resumed from its final checkpoint) writes no second copy."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch
from kedro_datasets_experimental.pytorch import PyTorchDataset

POOL = ".stores"  # inside the dataset's folder, beside the versions (as ShardStoreDataset's)


class PooledTorchDataset(PyTorchDataset):
    """`kedro_datasets_experimental.pytorch.PyTorchDataset` (saves `module.state_dict()`, loads the state dict) whose
    versioned saves on a local file system go to `<filepath>/.stores/<sha256 of the bytes>.pt`, hard-linked as the
    version's file (a copy where links are not possible). The version folders look as before; equal weights take
    the disk once. `python -m unseg.prune` removes pooled files no kept version links to.

    Example catalog entry::

        picie.network:
          type: unseg.datasets.PooledTorchDataset
          filepath: data/06_models/picie_network.pt
          versioned: true
    """

    def save(self, data: torch.nn.Module) -> None:
        if self._version is None or self._protocol != "file":
            super().save(data)
            return
        buffer = io.BytesIO()
        torch.save(data.state_dict(), buffer, **self._save_args)
        blob = buffer.getvalue()
        pool = Path(self._filepath) / POOL
        pooled = pool / f"{hashlib.sha256(blob).hexdigest()[:16]}.pt"
        if not pooled.is_file() or pooled.stat().st_size != len(blob):
            pool.mkdir(parents=True, exist_ok=True)
            tmp = pooled.with_name(f".{pooled.name}.tmp-{os.getpid()}")
            tmp.write_bytes(blob)
            os.replace(tmp, pooled)
        target = Path(self._get_save_path())
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(pooled, target)
        except OSError:  # no hard links here (another file system, some network shares): a copy
            target.write_bytes(blob)
        self._invalidate_cache()
