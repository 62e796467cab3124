"""Principal mask proposals (PriMaPs): the iterative principal-direction loop on a feature grid, batched over images.

Per image, with f the dense features (C, h, w) of a frozen backbone and every cell uncovered, repeat:

1. v = first principal direction of the uncovered raw features (centred), the top eigenvector of the C x C covariance
   by Lanczos iteration to convergence (checked on its residual, exact `torch.linalg.eigh` where it has not
   converged) or by `eigh` alone, instead of the reference's randomized low-rank PCA (100 iterations per step): the
   same direction up to sign, far cheaper, and deterministic;
2. sign rule: v is oriented so that the largest |cos(v, f)| among uncovered cells is positive;
3. s = cos(v, f) on the L2-normalised features, covered cells set to 0;
4. nearest-neighbour refinement: anchor = f at argmax s; s = cos(anchor, f), covered cells set to 0;
5. s[s < threshold * max s] = 0; s = s / max s: the soft mask; cells with s > 0 become covered.

Stops (per image, in this order of precedence): no uncovered cell has a positive similarity (max s <= 0; the
reference divides by zero there and the NaN turns the image into ignore), the covered fraction reaches `coverage`,
`max_masks` masks are kept, or the covered fraction did not change for `patience` iterations. Masks smaller than
`min_mask_size` cells are dropped: their cells leave the pool of uncovered cells (so the loop moves on) but do not
count as covered, so a run of tiny masks on structureless features ends the loop through `patience`. With
`min_mask_size: 1` every mask is kept, as in the reference.

[0] O. Hahn et al., "Boosting Unsupervised Semantic Segmentation with Principal Mask Proposals", TMLR 2024.
    https://arxiv.org/abs/2404.16818
[1] https://github.com/visinf/primaps (reference implementation; facts only, see docs/methods.md of the shared docs)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MAX_MASKS_LIMIT = 254  # mask ids are stored as uint8 with 255 = ignore
SOLVERS = ("lanczos", "eigh")
LANCZOS_STEPS = 16
LANCZOS_TOL = 1e-5


class Stop(enum.IntEnum):
    """Why the loop ended for an image."""

    RUNNING = 0
    COVERAGE = 1
    NO_CHANGE = 2
    NO_SIMILARITY = 3
    MAX_MASKS = 4


@dataclass(frozen=True)
class ProposalConfig:
    """Parameters of the mask-proposal loop (`primaps.proposals`).

    Attributes:
        threshold: cells with s < threshold * max s leave the mask (paper: 0.4).
        coverage: stop once this fraction of the grid is covered (paper: 0.95).
        patience: stop after this many iterations without a change of the covered fraction (paper: 3).
        max_masks: at most this many masks per image (a guard the reference lacks).
        min_mask_size: masks with fewer cells are dropped (1 keeps all, as the reference does).
        batch_size: images per batched loop.
        solver: the principal direction's eigensolver, "lanczos" (default, Krylov iteration checked against its
            residual, exact eigh where it has not converged) or "eigh" (exact; slower on a CPU).
    """

    threshold: float = 0.4
    coverage: float = 0.95
    patience: int = 3
    max_masks: int = 32
    min_mask_size: int = 2
    batch_size: int = 64
    solver: str = "lanczos"

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"primaps.proposals.solver {self.solver!r}; valid: {', '.join(SOLVERS)}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"primaps.proposals.threshold must lie in (0, 1], got {self.threshold}")
        if not 0.0 < self.coverage <= 1.0:
            raise ValueError(f"primaps.proposals.coverage must lie in (0, 1], got {self.coverage}")
        if self.patience < 1:
            raise ValueError(f"primaps.proposals.patience must be >= 1, got {self.patience}")
        if not 1 <= self.max_masks <= MAX_MASKS_LIMIT:
            raise ValueError(f"primaps.proposals.max_masks must lie in [1, {MAX_MASKS_LIMIT}], got {self.max_masks}")
        if self.min_mask_size < 1:
            raise ValueError(f"primaps.proposals.min_mask_size must be >= 1, got {self.min_mask_size}")
        if self.batch_size < 1:
            raise ValueError(f"primaps.proposals.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class Proposals:
    """Soft masks of a batch of images.

    Attributes:
        masks: float32 (B, max_masks, h, w); mask j of image b is masks[b, j] for j < counts[b], zeros beyond.
        counts: int64 (B,) masks kept per image.
        iterations: int64 (B,) loop iterations run per image.
        stop: int64 (B,) a `Stop` per image.
    """

    masks: torch.Tensor
    counts: torch.Tensor
    iterations: torch.Tensor
    stop: torch.Tensor


def covariances(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Covariance (unnormalised) of the weighted rows of each x[b], centred on their weighted mean.

    Args:
        x: (B, N, C) raw features.
        weights: (B, N) in {0, 1}: which rows take part (the uncovered cells).

    Returns:
        (B, C, C) symmetric positive semi-definite.
    """
    w = weights.to(x.dtype).unsqueeze(-1)
    mean = (w * x).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)
    centred = (x - mean) * w
    return centred.transpose(1, 2) @ centred


def top_eigenvectors_lanczos(cov: torch.Tensor, steps: int = LANCZOS_STEPS,
                             tol: float = LANCZOS_TOL) -> tuple[torch.Tensor, torch.Tensor]:
    """Top eigenvector of each symmetric PSD matrix by Lanczos (Krylov-accelerated power iteration), batched.

    Full reorthogonalisation; a fixed start vector, so the result is deterministic. A Krylov space that becomes
    invariant early (rank-deficient covariance: few uncovered cells) ends that matrix's recursion exactly.

    Args:
        cov: (B, C, C).
        steps: Krylov dimension (capped at C).
        tol: a vector counts as converged when |cov v - theta v| <= tol * theta.

    Returns:
        (B, C) unit vectors and (B,) bool: converged.
    """
    batch, channels, _ = cov.shape
    steps = min(steps, channels)
    start = torch.randn(channels, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q = (start / start.norm()).to(cov).expand(batch, channels, 1)
    basis = cov.new_zeros(batch, channels, steps)
    alpha = cov.new_zeros(batch, steps)
    beta = cov.new_zeros(batch, steps)
    for j in range(steps):
        basis[:, :, j:j + 1] = q
        w = cov @ q
        alpha[:, j] = (w * q).sum((1, 2))
        done = basis[:, :, :j + 1]
        for _ in range(2):  # full reorthogonalisation, twice is enough
            w = w - done @ (done.transpose(1, 2) @ w)
        norm = w.norm(dim=1).squeeze(1)
        alive = norm > 1e-6 * alpha[:, :j + 1].abs().amax(1).clamp_min(1e-30)
        beta[:, j] = torch.where(alive, norm, torch.zeros_like(norm))
        q = torch.where(alive[:, None, None], w / norm.clamp_min(1e-30)[:, None, None], torch.zeros_like(w))
    tri = torch.diag_embed(alpha) + torch.diag_embed(beta[:, :-1], 1) + torch.diag_embed(beta[:, :-1], -1)
    theta, ritz = torch.linalg.eigh(tri)
    vectors = F.normalize((basis @ ritz[..., -1:]).squeeze(-1), dim=1)
    residual = beta[:, -1] * ritz[:, -1, -1].abs()
    return vectors, residual <= tol * theta[:, -1].abs()


def principal_directions(x: torch.Tensor, weights: torch.Tensor, solver: str = "lanczos") -> torch.Tensor:
    """First principal direction of the weighted rows of each x[b].

    Args:
        x: (B, N, C) raw features.
        weights: (B, N) in {0, 1}: which rows take part (the uncovered cells).
        solver: "eigh" (exact symmetric eigensolver on the C x C covariance) or "lanczos" (Krylov iteration to a
            residual of 1e-5, exact `eigh` for any matrix that has not converged).

    Returns:
        (B, C) unit vectors, the eigenvector of the largest eigenvalue of each centred covariance (sign arbitrary).
    """
    if solver not in SOLVERS:
        raise ValueError(f"primaps.proposals.solver {solver!r}; valid: {', '.join(SOLVERS)}")
    cov = covariances(x, weights)
    if solver == "eigh":
        return torch.linalg.eigh(cov)[1][..., -1]  # ascending eigenvalues
    vectors, converged = top_eigenvectors_lanczos(cov)
    if not bool(converged.all()):
        stuck = torch.nonzero(~converged).squeeze(1)
        vectors[stuck] = torch.linalg.eigh(cov[stuck])[1][..., -1]
    return vectors


def orient(similarity: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """The sign rule: +1 or -1 per image so that the largest |similarity| among free cells becomes positive.

    Args:
        similarity: (B, N) cos(v, f).
        free: (B, N) bool, the uncovered cells.

    Returns:
        (B,) signs (+1 where the free cells are all 0 or there are none).
    """
    magnitude = torch.where(free, similarity.abs(), torch.full_like(similarity, -1.0))
    at = magnitude.argmax(1, keepdim=True)
    sign = torch.sign(similarity.gather(1, at).squeeze(1))
    return torch.where(sign == 0, torch.ones_like(sign), sign)


def propose_masks(features: torch.Tensor, config: ProposalConfig) -> Proposals:
    """Runs the PriMaPs loop on a batch of feature grids, all images at once.

    Args:
        features: (B, C, h, w) raw backbone features (any float dtype; computed in float32).
        config: see ProposalConfig.

    Returns:
        The soft masks, counts and stop reasons (see Proposals).
    """
    batch, channels, height, width = features.shape
    cells = height * width
    device = features.device
    raw = features.float().reshape(batch, channels, cells).transpose(1, 2)  # (B, N, C)
    unit = F.normalize(raw, dim=2)
    free = torch.ones(batch, cells, dtype=torch.bool, device=device)  # not yet in any mask, kept or dropped
    covered = torch.zeros(batch, cells, dtype=torch.bool, device=device)  # in a kept mask
    masks = torch.zeros(batch, config.max_masks, cells, device=device)
    counts = torch.zeros(batch, dtype=torch.long, device=device)
    iterations = torch.zeros(batch, dtype=torch.long, device=device)
    stale = torch.zeros(batch, dtype=torch.long, device=device)
    stop = torch.full((batch,), int(Stop.RUNNING), dtype=torch.long, device=device)

    while True:
        live = torch.nonzero(stop == Stop.RUNNING).squeeze(1)
        if live.numel() == 0:
            break
        x, u, fr = raw[live], unit[live], free[live]
        direction = principal_directions(x, fr, config.solver)
        # a: live image, n: cell, c: channel
        sim = torch.einsum("anc,ac->an", u, direction)
        sim = sim * orient(sim, fr).unsqueeze(1)
        sim = torch.where(fr, sim, torch.zeros_like(sim))
        first_max, anchor_at = sim.max(1)
        anchor = u[torch.arange(len(live), device=device), anchor_at]
        sim = torch.where(fr, torch.einsum("anc,ac->an", u, anchor), torch.zeros_like(sim))
        peak = sim.max(1).values
        positive = (first_max > 0) & (peak > 0)
        member = positive.unsqueeze(1) & (sim > 0) & (sim >= config.threshold * peak.unsqueeze(1))
        size = member.sum(1)
        keep = positive & (size >= config.min_mask_size)

        iterations[live] += positive.long()
        free[live] = fr & ~member
        kept = live[keep]
        if kept.numel():
            soft = torch.where(member[keep], sim[keep] / peak[keep].unsqueeze(1), torch.zeros_like(sim[keep]))
            masks[kept, counts[kept]] = soft
            counts[kept] += 1
            covered[kept] |= member[keep]
        stale[live] = torch.where(keep, torch.zeros_like(stale[live]), stale[live] + 1)

        fraction = covered[live].float().mean(1)
        reason = torch.full_like(live, int(Stop.RUNNING))
        reason = torch.where(stale[live] >= config.patience, torch.full_like(reason, int(Stop.NO_CHANGE)), reason)
        reason = torch.where(counts[live] >= config.max_masks, torch.full_like(reason, int(Stop.MAX_MASKS)), reason)
        reason = torch.where(fraction >= config.coverage, torch.full_like(reason, int(Stop.COVERAGE)), reason)
        reason = torch.where(~positive, torch.full_like(reason, int(Stop.NO_SIMILARITY)), reason)
        stop[live] = reason

    return Proposals(masks.reshape(batch, config.max_masks, height, width), counts, iterations, stop)
