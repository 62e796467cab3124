"""Fully connected CRF (Kraehenbuehl and Koltun, NIPS 2011) over per-pixel label logits, via pydensecrf2.

Settings of PriMaPs [0] (docs/methods.md of the shared docs): 10 mean-field iterations; a Gaussian (smoothness) kernel
with sxy=1, compat=3; a bilateral (appearance) kernel with sxy=67, srgb=3, compat=4. The unary is -log p of the
softmax of the logits, at the image resolution.

[0] https://arxiv.org/abs/2404.16818
[1] https://github.com/lucasb-eyer/pydensecrf (the maintained fork `pydensecrf2` on PyPI)
"""

from __future__ import annotations

import itertools
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from unseg.core.distributed import cpus_per_process


@dataclass(frozen=True)
class CRFConfig:
    """DenseCRF settings (`primaps.crf`).

    Attributes:
        enabled: False skips the CRF (argmax of the upsampled logits).
        iterations: mean-field iterations.
        gaussian_sxy / gaussian_compat: the smoothness kernel.
        bilateral_sxy / bilateral_srgb / bilateral_compat: the appearance kernel.
        workers: processes for a batch of images (`dense_crf_batch`); 0: one per CPU core of this process (under
            torchrun its share of the machine's); 1: in this process.
            Results do not depend on it.
    """

    enabled: bool = True
    iterations: int = 10
    gaussian_sxy: float = 1.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 67.0
    bilateral_srgb: float = 3.0
    bilateral_compat: float = 4.0
    workers: int = 0

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"primaps.crf.workers must be >= 0, got {self.workers}")
        if self.iterations < 1:
            raise ValueError(f"primaps.crf.iterations must be >= 1, got {self.iterations}")
        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
            if getattr(self, name) <= 0:
                raise ValueError(f"primaps.crf.{name} must be > 0, got {getattr(self, name)}")


def dense_crf(image: np.ndarray, logits: np.ndarray, config: CRFConfig) -> np.ndarray:
    """Mean-field inference of a DenseCRF.

    Args:
        image: uint8 (H, W, 3) RGB.
        logits: float (L, H, W) finite label logits (log-probabilities or any per-pixel shift of them).
        config: see CRFConfig.

    Returns:
        float32 (L, H, W) marginal probabilities.

    Raises:
        ValueError: shapes disagree, or the logits are not finite.
    """
    import pydensecrf.densecrf as dcrf

    labels, height, width = logits.shape
    if image.shape != (height, width, 3) or image.dtype != np.uint8:
        raise ValueError(f"dense_crf: image must be uint8 ({height}, {width}, 3), got {image.dtype} {image.shape}")
    if not np.isfinite(logits).all():
        raise ValueError("dense_crf: logits must be finite (drop -inf channels first)")
    log_probs = logits - logits.max(0, keepdims=True)
    log_probs = log_probs - np.log(np.exp(log_probs).sum(0, keepdims=True))
    crf = dcrf.DenseCRF2D(width, height, labels)
    crf.setUnaryEnergy(np.ascontiguousarray(-log_probs.reshape(labels, -1), dtype=np.float32))
    crf.addPairwiseGaussian(sxy=config.gaussian_sxy, compat=config.gaussian_compat)
    crf.addPairwiseBilateral(sxy=config.bilateral_sxy, srgb=config.bilateral_srgb,
                             rgbim=np.array(image, order="C"), compat=config.bilateral_compat)
    marginals = crf.inference(config.iterations)
    return np.asarray(marginals, dtype=np.float32).reshape(labels, height, width)



_POOLS: dict[int, ProcessPoolExecutor] = {}


def _pool(workers: int) -> ProcessPoolExecutor:
    """One pool per size for the life of the process. Forked where the platform can (no re-import of the caller's
    main module, as spawning does, so scripts and notebooks work unguarded); the workers run only numpy and
    pydensecrf, never torch, so the parent's threads cannot deadlock them."""
    if workers not in _POOLS:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=context)
    return _POOLS[workers]


def dense_crf_batch(images: Sequence[np.ndarray], logits: Sequence[np.ndarray], config: CRFConfig) -> list[np.ndarray]:
    """`dense_crf` of every (image, logits) pair, in `config.workers` processes: pydensecrf holds the GIL, so only
    processes run CRFs in parallel (threads measured 1.1x on 2 cores). Same results as one call per image."""
    workers = min(config.workers or cpus_per_process(), len(images))
    if workers <= 1:
        return [dense_crf(image, lg, config) for image, lg in zip(images, logits, strict=True)]
    if len(images) != len(logits):
        raise ValueError(f"dense_crf_batch: {len(images)} images but {len(logits)} logit maps")
    chunk = max(1, len(images) // (4 * workers))
    return list(_pool(config.workers or cpus_per_process()).map(dense_crf, images, logits, itertools.repeat(config),
                                                                chunksize=chunk))
