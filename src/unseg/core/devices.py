"""Device selection: `auto` takes CUDA when present, else the CPU; a process of a torchrun group takes its own GPU
(LOCAL_RANK)."""

from __future__ import annotations

import logging

import torch

from unseg.core.distributed import is_distributed, local_rank

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """Turns a `device` parameter into a torch.device.

    Args:
        name: "auto", "cpu", "cuda" or "cuda:<index>".

    Raises:
        ValueError: unknown name, or CUDA asked for on a machine without it.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and torch.cuda.is_available() and is_distributed():
        return torch.device("cuda", local_rank())  # one device per process of a torchrun group
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available here; use 'auto' or 'cpu'")
        return torch.device(name)
    raise ValueError(f"unknown device {name!r}; valid: {', '.join(DEVICE_CHOICES)} or 'cuda:<index>'")
