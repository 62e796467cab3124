"""PiCIE clustering: the mini-batch centroid update (hand case), planted clusters, bounded sample, label pass."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from unseg.core.picie.clustering import (
    ClusterConfig,
    assign_labels,
    cluster_entropy,
    cluster_view,
    sample_quota,
    update_centroids,
)


def test_centroid_update_by_hand() -> None:
    centroids = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, -0.8]], dtype=torch.float64)
    counts = torch.tensor([2.0, 3.0, 5.0], dtype=torch.float64)
    vectors = torch.tensor([[0.6, 0.8], [0.8, 0.6], [0.0, 1.0]], dtype=torch.float64)
    assign = torch.tensor([0, 0, 1])
    new, new_counts = update_centroids(centroids, counts, vectors, assign)
    # k=0: n=2, N=2+2=4, eta=1/2, mean=(0.7, 0.7) -> 0.5 (1, 0) + 0.5 (0.7, 0.7)
    # k=1: n=1, N=3+1=4, eta=1/4, mean=(0, 1)     -> (0, 1)
    # k=2: absent, unchanged
    torch.testing.assert_close(new, torch.tensor([[0.85, 0.35], [0.0, 1.0], [0.6, -0.8]], dtype=torch.float64))
    torch.testing.assert_close(new_counts, torch.tensor([4.0, 4.0, 5.0], dtype=torch.float64))


def test_update_from_zero_counts_takes_the_batch_mean() -> None:
    """eta = 1 when nothing was counted before: the centroid becomes the batch mean (the running-mean start)."""
    new, _ = update_centroids(torch.zeros(1, 2), torch.zeros(1, dtype=torch.float64),
                              torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    torch.testing.assert_close(new, torch.tensor([[0.5, 0.5]]))


def planted(num_batches: int, batch: int, k: int, dim: int = 16, side: int = 6,
            seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Feature maps whose pixels are noisy copies of k orthogonal directions (scaled at random), and the truth."""
    gen = torch.Generator().manual_seed(seed)
    directions = torch.eye(dim)[:k]
    maps, truths = [], []
    for _ in range(num_batches):
        truth = torch.randint(0, k, (batch, side, side), generator=gen)
        feats = directions[truth] * (0.5 + torch.rand(batch, side, side, 1, generator=gen))
        feats = feats + 0.1 * torch.randn(batch, side, side, dim, generator=gen)
        maps.append(feats.permute(0, 3, 1, 2).contiguous())
        truths.append(truth)
    return maps, truths, directions


def agreement(labels: torch.Tensor, truth: torch.Tensor, k: int) -> float:
    """Fraction of pixels whose label matches the truth under the best permutation."""
    best = 0.0
    for perm in itertools.permutations(range(k)):
        best = max(best, float((torch.tensor(perm)[labels] == truth).float().mean()))
    return best


@pytest.mark.parametrize("init_batches", [2, 10])  # with / without the mini-batch pass
def test_planted_clusters_are_recovered(init_batches: int) -> None:
    k, num_batches, batch = 4, 6, 3
    maps, truths, _ = planted(num_batches, batch, k)
    config = ClusterConfig(num_clusters=k, num_iters=20, num_redo=5, sample_size=200, init_batches=init_batches,
                           batch_size=batch)
    result = cluster_view(iter(maps), num_batches, config, seed=0)
    assert result.centroids.shape == (k, 16)
    np.testing.assert_allclose(np.linalg.norm(result.centroids, axis=1), 1.0, atol=1e-5)
    assert result.sample_size <= 200 + min(init_batches, num_batches)
    assert result.update_batches == max(0, num_batches - init_batches)
    total_pixels = num_batches * batch * 36
    assert result.counts.sum() == pytest.approx(total_pixels)  # sampled counts stand for all init pixels
    labels = torch.cat([assign_labels(m, torch.from_numpy(result.centroids)) for m in maps])
    assert agreement(labels, torch.cat(truths), k) > 0.99


def test_k_larger_than_sampled_pixels_raises() -> None:
    with pytest.raises(ValueError, match="smaller than K"):
        ClusterConfig(num_clusters=50, sample_size=20)
    config = ClusterConfig(num_clusters=50, sample_size=100, init_batches=1, batch_size=1)
    with pytest.raises(ValueError, match="K=50 is larger than the 16 pixels"):
        sample_quota(config, num_batches=3, pixels_per_batch=16)
    maps, _, _ = planted(2, 1, 2, side=4)
    with pytest.raises(ValueError, match="lower K or raise sample_size"):
        cluster_view(iter(maps), 2, config, seed=0)


def test_cluster_entropy() -> None:
    assert cluster_entropy(np.array([5, 5, 5, 5])) == pytest.approx(1.0)
    assert cluster_entropy(np.array([20, 0, 0, 0])) == pytest.approx(0.0)
    assert 0 < cluster_entropy(np.array([10, 5, 1, 0])) < 1
