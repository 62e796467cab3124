"""PriMaPs mask proposals: planted groups are recovered; stop criteria, guards and the sign rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unseg.core.primaps.proposals import (
    SOLVERS,
    ProposalConfig,
    Stop,
    orient,
    principal_directions,
    propose_masks,
    top_eigenvectors_lanczos,
)

H = W = 8


def planted(groups: int, seed: int = 0, channels: int = 32, noise: float = 0.05) -> tuple[torch.Tensor, np.ndarray]:
    """One image (C, H, W) whose cells belong to `groups` horizontal bands; each band's features are its own
    orthogonal direction (with a band-specific norm) plus a little noise.

    Returns:
        features (1, C, H, W) and the band id of every cell (H, W).
    """
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(groups), int(np.ceil(H / groups)))[:H]
    truth = np.repeat(truth[:, None], W, axis=1)
    directions = np.linalg.qr(rng.normal(size=(channels, groups)))[0].T  # orthonormal rows
    norms = np.linspace(3.0, 1.5, groups)
    feats = directions[truth] * norms[truth][..., None] + rng.normal(0, noise, (H, W, channels))
    return torch.from_numpy(feats.transpose(2, 0, 1)[None].astype(np.float32)), truth


def mask_ids(result_masks: torch.Tensor, count: int) -> np.ndarray:
    """Cell -> index of the (single) mask holding it, -1 outside every mask."""
    masks = result_masks[:count].numpy()
    ids = np.full(masks.shape[1:], -1)
    for j, mask in enumerate(masks):
        assert (ids[mask > 0] == -1).all(), "masks overlap"
        ids[mask > 0] = j
    return ids


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("groups", [2, 4])
def test_planted_groups_are_recovered(groups: int, solver: str) -> None:
    features, truth = planted(groups)
    result = propose_masks(features, ProposalConfig(min_mask_size=1, solver=solver))
    assert int(result.counts[0]) == groups
    assert int(result.stop[0]) == Stop.COVERAGE
    ids = mask_ids(result.masks[0], groups)
    assert (ids >= 0).all()  # everything covered
    # one mask per group: the partitions agree up to renaming
    pairs = set(zip(ids.ravel().tolist(), truth.ravel().tolist(), strict=True))
    assert len(pairs) == groups
    masks = result.masks[0, :groups]
    assert float(masks.max()) == pytest.approx(1.0) and float(masks[masks > 0].min()) >= 0.4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_mask_is_the_thresholded_cosine_to_its_anchor(seed: int) -> None:
    """Steps 3-5 by definition: mask j = cos(anchor_j, f) / max where >= 0.4 max, on cells still uncovered."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(1, 12, H, W, generator=gen) + 0.5
    result = propose_masks(features, ProposalConfig(min_mask_size=1, threshold=0.4))
    unit = torch.nn.functional.normalize(features[0].reshape(12, -1), dim=0)  # (C, N)
    free = torch.ones(H * W, dtype=torch.bool)
    for j in range(int(result.counts[0])):
        mask = result.masks[0, j].reshape(-1)
        anchor = int(torch.nonzero(mask == mask.max())[0])
        assert float(mask[anchor]) == pytest.approx(1.0)
        cos = torch.where(free, unit.T @ unit[:, anchor], torch.zeros(H * W))
        expected = torch.where(cos >= 0.4 * cos.max(), cos / cos.max(), torch.zeros_like(cos))
        torch.testing.assert_close(mask, expected, atol=1e-5, rtol=0)
        free &= mask == 0


def test_coverage_stop() -> None:
    features, _ = planted(4)
    result = propose_masks(features, ProposalConfig(min_mask_size=1, coverage=0.5))
    assert int(result.stop[0]) == Stop.COVERAGE
    assert int(result.counts[0]) == 2  # two bands of four cover half the grid


def test_no_change_for_patience_iterations_stops() -> None:
    """Two planted bands, then one-hot singletons: every later mask has one cell, below min_mask_size=2."""
    features, _ = planted(2, channels=H * W + 8)
    cells = features[0].reshape(features.shape[1], -1)
    singles = torch.arange(H * W // 2, H * W)  # the lower half becomes structureless
    cells[:, singles] = 0.0
    cells[8 + singles, singles] = 1.0
    features = cells.reshape(1, -1, H, W)
    result = propose_masks(features, ProposalConfig(min_mask_size=2, patience=3, coverage=0.99))
    assert int(result.stop[0]) == Stop.NO_CHANGE
    assert int(result.counts[0]) == 1  # the upper band; the lower half yields only dropped single cells
    assert int(result.iterations[0]) == 1 + 3


def test_max_similarity_guard_stops_instead_of_nan() -> None:
    """All-zero features: no cell has a positive similarity; the reference would divide by zero."""
    result = propose_masks(torch.zeros(2, 16, H, W), ProposalConfig())
    assert result.stop.tolist() == [Stop.NO_SIMILARITY] * 2
    assert result.counts.tolist() == [0, 0]
    assert torch.isfinite(result.masks).all()


def test_guard_after_the_structured_part_is_covered() -> None:
    features, _ = planted(2)
    features[..., H // 2:, :] = 0.0  # the lower band carries nothing
    result = propose_masks(features, ProposalConfig(min_mask_size=1))
    assert int(result.stop[0]) == Stop.NO_SIMILARITY
    assert int(result.counts[0]) == 1
    assert torch.isfinite(result.masks).all()


def test_mask_count_bound() -> None:
    features, _ = planted(4)
    result = propose_masks(features, ProposalConfig(min_mask_size=1, max_masks=2))
    assert int(result.stop[0]) == Stop.MAX_MASKS
    assert int(result.counts[0]) == 2
    assert result.masks.shape[1] == 2


def test_batched_equals_one_image_at_a_time() -> None:
    features = torch.cat([planted(g, seed=g)[0] for g in (2, 3, 4)])
    config = ProposalConfig(min_mask_size=1)
    batched = propose_masks(features, config)
    for b in range(3):
        single = propose_masks(features[b:b + 1], config)
        assert int(single.counts[0]) == int(batched.counts[b])
        torch.testing.assert_close(single.masks[0], batched.masks[b], atol=1e-5, rtol=0)


def test_lanczos_matches_eigh_on_random_covariances() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 40, 24, generator=gen) * torch.linspace(3, 0.1, 24)
    weights = (torch.rand(6, 40, generator=gen) > 0.3).float()
    exact = principal_directions(x, weights, "eigh")
    fast = principal_directions(x, weights, "lanczos")
    assert torch.allclose((exact * fast).sum(1).abs(), torch.ones(6), atol=1e-5)


def test_lanczos_on_a_rank_deficient_covariance_is_exact() -> None:
    """Two free rows: rank 1; the Krylov space is invariant after one step."""
    x = torch.randn(1, 2, 10)
    cov = (x - x.mean(1, keepdim=True)).transpose(1, 2) @ (x - x.mean(1, keepdim=True))
    vector, converged = top_eigenvectors_lanczos(cov)
    expected = torch.nn.functional.normalize(x[0, 0] - x[0, 1], dim=0)
    assert bool(converged[0])
    assert float((vector[0] * expected).sum().abs()) == pytest.approx(1.0, abs=1e-5)


def test_sign_rule_makes_the_largest_magnitude_positive() -> None:
    sim = torch.tensor([[0.2, -0.9, 0.5], [0.2, -0.9, 0.5], [0.0, 0.0, 0.0]])
    free = torch.tensor([[True, True, True], [True, False, True], [True, True, True]])
    assert orient(sim, free).tolist() == [-1.0, 1.0, 1.0]  # covered cells do not count; all-zero: +1


@pytest.mark.parametrize("bad", [{"threshold": 0.0}, {"coverage": 1.5}, {"patience": 0}, {"max_masks": 255},
                                 {"min_mask_size": 0}, {"batch_size": 0}, {"solver": "svd"}])
def test_bad_settings_raise(bad: dict) -> None:
    with pytest.raises(ValueError, match="primaps.proposals"):
        ProposalConfig(**bad)
