"""Per-epoch training checkpoints of PriMaPs-EM, written atomically, for resuming a killed run.

A run's checkpoints live in one folder keyed by a fingerprint of everything that determines the result (parameters,
upstream data, seed); only the newest epoch is kept. A file is written under a temporary name and renamed into place,
so an existing `epoch-NNNN.pt` is always complete; an unreadable one is skipped with a warning.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^epoch-(\d{4,})\.pt$")


def save_checkpoint(folder: Path, epoch: int, state: dict[str, Any]) -> Path:
    """Writes `state` as epoch `epoch` and removes older epochs of the same folder.

    Args:
        folder: the run's checkpoint folder (created when missing).
        epoch: 0 = after the initialisation, e = after EM epoch e.
        state: tensors, numbers, strings, lists and dicts (loadable with weights_only=True).

    Returns:
        The checkpoint's path.
    """
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"epoch-{epoch:04d}.pt"
    tmp = folder / f".{final.name}.tmp-{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, final)
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match and int(match.group(1)) < epoch:
            path.unlink(missing_ok=True)
    return final


def load_latest(folder: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint of a folder, or None when there is none."""
    if not folder.is_dir():
        return None
    found = sorted(((int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))), reverse=True)
    for epoch, path in found:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is skipped, never trusted
            logger.warning("checkpoint %s is unreadable (%s): skipped", path, err.__class__.__name__)
            continue
        if isinstance(state, dict) and state.get("epoch") == epoch:
            return state
        logger.warning("checkpoint %s does not hold epoch %d: skipped", path, epoch)
    return None
