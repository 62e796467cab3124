"""PiCIE's loss: frozen cosine classifiers from the two views' centroids, within- and cross-view cross-entropy.

[0] https://arxiv.org/abs/2103.17070, Eq. 5-7
[1] https://github.com/janghyuncho/PiCIE (train_picie.py, commit 07cc8ffb)

With f1 = f(view 1), f2 = T(f(view 2)) (pixel-aligned, L2-normalised), centroids C1, C2 of the two views and the
label-pass labels y1, y2:
    within = [CE(C1 f1, y1) + CE(C2 f2, y2)] / 2,   cross = [CE(C2 f1, y2) + CE(C1 f2, y1)] / 2,
    loss = (within + cross) / 2.
The classifiers are 1x1 convolutions without bias whose weights are the centroids, frozen (no gradient reaches them).

Class weights of each CE (a criterion per view, as in [1]), from that view's label counts:
- "inverse" (default): w_k proportional to 1 / count_k, each cluster weighs the same in total; what balancing is meant
  to do, and it keeps large clusters from swallowing small ones;
- "frequency": w_k proportional to count_k, the reference's behaviour (reported upstream as a bug: it favours the
  largest clusters); choose it to reproduce paper numbers;
- "none": plain CE.
Clusters with no pixel get weight 0 (they are never a target).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

CLASS_WEIGHTS = ("inverse", "frequency", "none")


@dataclass(frozen=True)
class LossConfig:
    """Attributes: class_weights: one of CLASS_WEIGHTS (see the module docstring)."""

    class_weights: str = "inverse"

    def __post_init__(self) -> None:
        if self.class_weights not in CLASS_WEIGHTS:
            raise ValueError(f"picie loss class_weights {self.class_weights!r}; valid: {', '.join(CLASS_WEIGHTS)}")


def class_weights(counts: np.ndarray, mode: str) -> torch.Tensor | None:
    """CE weights (K,) float32 from label counts (K,), normalised to mean 1 over non-empty clusters; None for "none".

    Raises:
        ValueError: unknown mode.
    """
    if mode not in CLASS_WEIGHTS:
        raise ValueError(f"class weights {mode!r}; valid: {', '.join(CLASS_WEIGHTS)}")
    if mode == "none":
        return None
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts[present] if mode == "frequency" else 1.0 / counts[present]
    if present.any():
        weights /= weights[present].mean()
    return torch.from_numpy(weights.astype(np.float32))


def cosine_logits(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """The frozen classifier: (B, D, h, w) features (normalised here) x (K, D) centroids -> (B, K, h, w)."""
    # b: batch, d: channel, k: cluster, h/w: grid
    return torch.einsum("bdhw,kd->bkhw", F.normalize(features, dim=1), centroids.detach())


@dataclass
class LossTerms:
    """loss = (within + cross) / 2; within and cross as in the module docstring (detached copies for logging)."""

    loss: torch.Tensor
    within: torch.Tensor
    cross: torch.Tensor


def picie_loss(f1: torch.Tensor, f2: torch.Tensor, y1: torch.Tensor, y2: torch.Tensor, c1: torch.Tensor,
               c2: torch.Tensor, w1: torch.Tensor | None = None, w2: torch.Tensor | None = None) -> LossTerms:
    """Within- and cross-view CE.

    Args:
        f1: (B, D, h, w) view-1 features; f2: (B, D, h, w) view-2 features after T (aligned with f1).
        y1, y2: int64 (B, h, w) labels of view 1 and view 2.
        c1, c2: (K, D) centroids of view 1 and view 2 (unit length).
        w1, w2: (K,) CE class weights of criterion 1 (labels y1) and 2 (labels y2), or None.

    Returns:
        LossTerms.
    """
    w1 = None if w1 is None else w1.to(f1.device, f1.dtype)
    w2 = None if w2 is None else w2.to(f1.device, f1.dtype)
    within = (F.cross_entropy(cosine_logits(f1, c1), y1, weight=w1)
              + F.cross_entropy(cosine_logits(f2, c2), y2, weight=w2)) / 2
    cross = (F.cross_entropy(cosine_logits(f1, c2), y2, weight=w2)
             + F.cross_entropy(cosine_logits(f2, c1), y1, weight=w1)) / 2
    return LossTerms((within + cross) / 2, within.detach(), cross.detach())
