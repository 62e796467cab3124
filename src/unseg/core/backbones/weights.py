"""Loading a backbone's usual pretrained weights (`weights=None`), with an error that says what to do offline.

timm downloads from the Hugging Face hub and torchvision from download.pytorch.org; both cache the file
(HF_HOME / TORCH_HOME) and fail without network. On a machine without network the hub client retries for about a
minute before giving up; setting HF_HUB_OFFLINE=1 makes it look in its cache only and fail at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from unseg.core.backbones.registry import BackboneCfg

logger = logging.getLogger(__name__)

T = TypeVar("T")


def pretrained_or_explain(cfg: BackboneCfg, load: Callable[[], T]) -> T:
    """Runs `load` (a build with download); turns any failure into one clear error.

    Args:
        cfg: the entry, for its name and weights_source.
        load: builds the network with its pretrained weights (downloading them unless cached).

    Returns:
        what `load` returns.

    Raises:
        RuntimeError: the download (or the cache lookup) failed; the message names the backbone, the source and how
            to pass a local file instead.
    """
    logger.info("backbone %s: loading pretrained weights from %s (cached after the first download)", cfg.name,
                cfg.weights_source)
    try:
        return load()
    except Exception as err:  # network and hub errors come in many classes (OSError, URLError, hub, HTTP errors)
        detail = str(err).splitlines()[0] if str(err) else ""
        raise RuntimeError(
            f"backbone {cfg.name}: could not load its pretrained weights from {cfg.weights_source} "
            f"({err.__class__.__name__}: {detail}). Without network, download the checkpoint on another machine "
            f"and pass the local file: features.weights=/path/to/checkpoint, e.g. kedro run --params "
            f"\"features.backbone={cfg.name},features.weights=/path/to/checkpoint\" (see docs/backbones.md)"
        ) from err
