"""Per-epoch checkpoints of PiCIE training: atomic writes, the latest readable one on resume.

A checkpoint folder belongs to one fingerprint (parameters that change the training, the data, the init); a run
with the same fingerprint continues from the last finished epoch. Files are written to a temporary name and renamed,
so a killed write never leaves a file a reader would take for a checkpoint.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^epoch_(\d+)\.pt$")


def checkpoint_path(directory: Path, epoch: int) -> Path:
    return Path(directory) / f"epoch_{epoch:04d}.pt"


def rng_states() -> dict[str, Any]:
    """The global RNG states (torch CPU, numpy, python) as plain types (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), pos, has_gauss, cached],
            "python": random.getstate()}


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(directory: Path, epoch: int, payload: dict[str, Any], keep: int = 1) -> Path:
    """Writes `payload` as epoch `epoch` atomically, then deletes all but the newest `keep` checkpoints."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(directory, epoch)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, final)
    for old in list_checkpoints(directory)[:-max(1, keep)]:
        old[1].unlink(missing_ok=True)
    return final


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of the checkpoint files in `directory`, oldest first."""
    if not Path(directory).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(directory).iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def load_latest(directory: Path, map_location: torch.device | str = "cpu",
                max_epoch: int | None = None) -> dict[str, Any] | None:
    """The newest readable checkpoint in `directory` of an epoch <= max_epoch (unreadable ones are skipped with a
    warning), or None."""
    for epoch, path in reversed(list_checkpoints(directory)):
        if max_epoch is not None and epoch > max_epoch:
            logger.warning("PiCIE checkpoint %s is past the %d epochs asked for; not used", path, max_epoch)
            continue
        try:
            payload = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:  # noqa: BLE001 - a damaged file: fall back to an older one
            logger.warning("PiCIE checkpoint %s is unreadable (%s); trying an older one", path, err)
            continue
        if payload.get("epoch") == epoch:
            return dict(payload)
        logger.warning("PiCIE checkpoint %s holds epoch %s; skipped", path, payload.get("epoch"))
    return None
