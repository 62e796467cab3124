"""Global class prototypes of PriMaPs-EM: a weight-normalised 1x1 convolution and its initialisation.

logit_k = g_k * <v_k / |v_k|, f> on the RAW features f (not L2-normalised): the feature norms make the logits sharp,
which is what lets the focal class weights of the M-step act. Only the k-means warm-up normalises the features (pure
cosine, gain fixed to 1). Initialisation: the top-K principal directions of a sample of training features, then
`warmup_epochs` of plain cosine k-means (loss = -mean over pixels of max_k cos(f, theta_k), Adam), or a given set of
cluster centres (the "+SotA+PriMaPs" combination, e.g. PiCIE's centroids).

[0] https://arxiv.org/abs/2404.16818
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


class Prototypes(nn.Module):
    """K weight-normalised prototypes with a gain each, scoring dense features.

    Args:
        directions: (K, C) initial directions (any norm).
        gains: (K,) initial gains; ones when None.
    """

    def __init__(self, directions: torch.Tensor, gains: torch.Tensor | None = None) -> None:
        super().__init__()
        self.direction = nn.Parameter(directions.detach().clone().float())
        start = torch.ones(len(directions)) if gains is None else gains.detach().clone().float()
        self.gain = nn.Parameter(start)

    @property
    def num_prototypes(self) -> int:
        return int(self.direction.shape[0])

    def weight(self) -> torch.Tensor:
        """(K, C) the effective 1x1 conv weight g_k * v_k / |v_k|."""
        return F.normalize(self.direction, dim=1) * self.gain.unsqueeze(1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Args: features (B, C, h, w) raw. Returns: logits (B, K, h, w)."""
        # b: batch, c: channel, k: prototype, h/w: grid
        return torch.einsum("bchw,kc->bkhw", features, self.weight())

    def state(self) -> dict[str, list]:
        """JSON-able {"directions": (K, C) unit rows, "gains": (K,)}."""
        return {"directions": F.normalize(self.direction.detach(), dim=1).cpu().tolist(),
                "gains": self.gain.detach().cpu().tolist()}

    @classmethod
    def from_state(cls, state: dict[str, list]) -> Prototypes:
        return cls(torch.tensor(state["directions"], dtype=torch.float32),
                   torch.tensor(state["gains"], dtype=torch.float32))


def principal_init(vectors: np.ndarray, num_prototypes: int) -> torch.Tensor:
    """Top-K principal directions of a feature sample.

    Each direction is oriented so that the largest |cos(v, f)| over the sample is positive (the same sign rule as the
    proposals; the sign of an eigenvector is otherwise arbitrary).

    Args:
        vectors: float (N, C) raw feature vectors.
        num_prototypes: K.

    Returns:
        (K, C) unit directions, by decreasing eigenvalue.

    Raises:
        ValueError: K < 1, K > C, or fewer than K sampled vectors.
    """
    count, channels = vectors.shape
    if num_prototypes < 1:
        raise ValueError(f"primaps: the number of prototypes must be >= 1, got {num_prototypes}")
    if num_prototypes > channels:
        raise ValueError(f"primaps: {num_prototypes} prototypes need as many principal directions, but the features "
                         f"have only {channels} channels")
    if num_prototypes > count:
        raise ValueError(f"primaps: {num_prototypes} prototypes (K) but only {count} feature vectors sampled; K must "
                         "not exceed the sampled pixels (raise primaps.em.init_sample or lower K)")
    x = torch.from_numpy(np.asarray(vectors, dtype=np.float64))
    centred = x - x.mean(0, keepdim=True)
    _, vecs = torch.linalg.eigh(centred.T @ centred)
    directions = vecs[:, -num_prototypes:].flip(1).T  # (K, C), largest eigenvalue first
    cos = F.normalize(x, dim=1) @ directions.T  # (N, K)
    at = cos.abs().argmax(0)
    signs = torch.sign(cos[at, torch.arange(num_prototypes)])
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return (directions * signs.unsqueeze(1)).float()


class CosineWarmup:
    """The cosine k-means warm-up probe: directions theta (K, C), gain fixed to 1, Adam.

    Args:
        directions: (K, C) initial directions.
        lr: Adam learning rate (paper: 5e-3).
    """

    def __init__(self, directions: torch.Tensor, lr: float) -> None:
        self.theta = nn.Parameter(directions.detach().clone().float())
        self.optimizer = torch.optim.Adam([self.theta], lr=lr)

    def step(self, features: torch.Tensor) -> float:
        """One optimisation step on a batch (B, C, h, w) of raw features; returns the loss."""
        pixels = F.normalize(features.float().permute(0, 2, 3, 1).reshape(-1, features.shape[1]), dim=1)
        cos = pixels @ F.normalize(self.theta, dim=1).T  # (B * h * w, K)
        loss = -cos.max(dim=1).values.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def directions(self) -> torch.Tensor:
        """(K, C) unit directions."""
        return F.normalize(self.theta.detach(), dim=1)
