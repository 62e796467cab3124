"""PiCIE's per-epoch clustering of one view: k-means on a bounded sample, a mini-batch centroid pass, labels.

[0] https://arxiv.org/abs/2103.17070, Sec. 3.2;  [1] https://github.com/janghyuncho/PiCIE (commons.py, commit 07cc8ffb)

Every epoch, separately for each view, from scratch, on L2-normalised pixel features (spherical k-means):
1. initial k-means (faiss) on a random SAMPLE of the pixel features of the first `init_batches` batches. The reference
   clusters every pixel of those batches (20 batches x 256 images x 80 x 80 = 33M vectors, ~17 GB of host RAM); the
   sample keeps memory at `sample_size` x D floats whatever the data set size. Each sampled pixel stands for
   (pixels of the init batches / sample size) pixels in the cluster counts, as if all had been assigned;
2. a mini-batch pass over the remaining batches: assign each pixel to its nearest centroid, then for every cluster k
   present, c_k <- (1 - eta) c_k + eta * mean(batch features assigned to k), eta = n_k(batch) / N_k(cumulative,
   this batch and the initial counts included), i.e. a running mean;
3. (`assign_labels`) a streaming label pass assigning every pixel of the view to its nearest centroid.
Centroids are kept as running means and used L2-normalised (nearest = largest cosine). The reference keeps them
unnormalised and assigns by Euclidean distance to the raw means; with unit-length features the two differ only in
how the shrinking of a mean's norm is treated.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from unseg.core.kmeans import KMeansConfig, fit_kmeans

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterConfig:
    """Per-view clustering parameters.

    Attributes:
        num_clusters: K_train (paper 27).
        num_iters: Lloyd iterations of the initial k-means (reference 10-30).
        num_redo: restarts of the initial k-means, the best objective wins (reference 1).
        sample_size: pixel features in the initial k-means sample (bounded memory).
        init_batches: batches whose pixels the sample is drawn from (reference: 20); the rest get the mini-batch pass.
        batch_size: images per batch of the clustering and label passes (reference: 256).
        cache_mb: the label pass reuses the clustering pass's features (float32, both views) when they fit in this
            many MB, instead of running the network over every image again (the reference always recomputes);
            0: always recompute.
    """

    num_clusters: int
    num_iters: int = 20
    num_redo: int = 1
    sample_size: int = 100_000
    init_batches: int = 20
    batch_size: int = 256
    cache_mb: int = 0

    def __post_init__(self) -> None:
        for name in ("num_clusters", "num_iters", "num_redo", "sample_size", "init_batches", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"picie clustering {name} must be >= 1, got {getattr(self, name)}")
        if self.cache_mb < 0:
            raise ValueError(f"picie clustering cache_mb must be >= 0, got {self.cache_mb}")
        if self.sample_size < self.num_clusters:
            raise ValueError(f"picie clustering sample_size={self.sample_size} is smaller than K={self.num_clusters}: "
                             f"k-means needs at least K sampled pixels")


@dataclass
class ClusterResult:
    """Centroids of one view and what the pass saw.

    Attributes:
        centroids: float32 (K, D), unit length.
        counts: float64 (K,) cumulative (init counts scaled to the pixels they stand for).
        sample_size: pixels in the initial k-means sample.
        init_pixels: pixels of the init batches.
        update_batches: batches of the mini-batch pass.
        objective: mean cosine distance (1 - cos) of the mini-batch pass pixels to their centroid (of the sample
            when there was no mini-batch pass).
    """

    centroids: np.ndarray
    counts: np.ndarray
    sample_size: int
    init_pixels: int
    update_batches: int
    objective: float


def flatten_pixels(features: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) -> L2-normalised pixel vectors (B * h * w, D) in float32."""
    return F.normalize(features.float(), dim=1).permute(0, 2, 3, 1).reshape(-1, features.shape[1])


def sample_pixels(features: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """The L2-normalised pixel vectors (n, D) at flat positions `rows` of (B, D, h, w) (in flatten_pixels order),
    gathered without copying the whole batch."""
    batch, dim, height, width = features.shape
    index = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(features.device)
    image, pixel = index // (height * width), index % (height * width)
    return F.normalize(features.reshape(batch, dim, height * width)[image, :, pixel].float(), dim=1)


def nearest(vectors: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) unit vectors, (K, D) centroids -> (index of the largest cosine (N,), that cosine (N,))."""
    # n: pixel, d: channel, k: cluster
    scores = torch.einsum("nd,kd->nk", vectors, F.normalize(centroids, dim=1))
    best, index = scores.max(dim=1)
    return index, best


def update_centroids(centroids: torch.Tensor, counts: torch.Tensor, vectors: torch.Tensor,
                     assign: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One mini-batch centroid update: c_k <- (1 - eta) c_k + eta * mean_k, eta = n_k / (counts_k + n_k).

    Args:
        centroids: (K, D) running means.
        counts: (K,) float64 pixels counted so far per cluster.
        vectors: (N, D) this batch's pixel features.
        assign: (N,) int64 their clusters.

    Returns:
        (new centroids (K, D), new counts (K,)); clusters absent from the batch are unchanged.
    """
    num_clusters = len(centroids)
    batch_counts = torch.bincount(assign, minlength=num_clusters).to(counts.dtype)
    sums = torch.zeros_like(centroids).index_add_(0, assign, vectors.to(centroids.dtype))
    new_counts = counts + batch_counts
    present = batch_counts > 0
    eta = torch.where(present, batch_counts / new_counts.clamp_min(1e-12), torch.zeros_like(new_counts))
    means = sums / batch_counts.clamp_min(1).unsqueeze(1).to(centroids.dtype)
    eta = eta.to(centroids.dtype).unsqueeze(1)
    return (1 - eta) * centroids + eta * means, new_counts


def sample_quota(config: ClusterConfig, num_batches: int, pixels_per_batch: int) -> int:
    """Pixels drawn from each init batch, so that the sample holds about `sample_size` pixels.

    Raises:
        ValueError: the init batches hold fewer pixels than K (k-means cannot run).
    """
    init = min(config.init_batches, num_batches)
    quota = min(math.ceil(config.sample_size / init), pixels_per_batch)
    if quota * init < config.num_clusters:
        raise ValueError(f"picie clustering: K={config.num_clusters} is larger than the {quota * init} pixels "
                         f"sampled from the first {init} batches; lower K or raise sample_size / init_batches")
    return quota


def cluster_view(batches: Iterable[torch.Tensor], num_batches: int, config: ClusterConfig, seed: int,
                 use_gpu: bool = False) -> ClusterResult:
    """Steps 1 and 2 of the module docstring over a stream of feature maps of one view.

    Args:
        batches: `num_batches` feature maps (B, D, h, w) (not necessarily normalised), in pass order.
        num_batches: how many the stream yields.
        config: see ClusterConfig.
        seed: seeds the sample and faiss.
        use_gpu: faiss on the GPU (needs a faiss GPU build).

    Returns:
        ClusterResult.

    Raises:
        ValueError: too few sampled pixels for K (see sample_quota).
    """
    init_batches = min(config.init_batches, num_batches)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7]))
    sample: list[np.ndarray] = []
    init_pixels, update_batches, sample_len = 0, 0, 0
    centroids = counts = None
    distance_sum, distance_count = 0.0, 0
    quota = None
    for index, features in enumerate(batches):
        if index < init_batches:
            pixels = features.shape[0] * features.shape[2] * features.shape[3]
            if quota is None:
                quota = sample_quota(config, num_batches, pixels)
            rows = np.sort(rng.choice(pixels, size=min(quota, pixels), replace=False))
            sample.append(sample_pixels(features, rows).cpu().numpy())
            init_pixels += pixels
            if index == init_batches - 1:
                stacked = np.concatenate(sample)
                sample, sample_len = [], len(stacked)
                centroids, counts, objective = _initial_fit(stacked, init_pixels, config, seed, use_gpu)
                del stacked
                centroids = centroids.to(features.device)
            continue
        vectors = flatten_pixels(features)
        assign, best = nearest(vectors, centroids)
        distance_sum += float((1 - best).sum())
        distance_count += len(best)
        centroids, counts = update_centroids(centroids, counts.to(vectors.device), vectors, assign)
        update_batches += 1
    if centroids is None:
        raise ValueError("picie clustering: the feature stream was empty")
    if distance_count:
        objective = distance_sum / distance_count
    return ClusterResult(F.normalize(centroids, dim=1).cpu().numpy().astype(np.float32),
                         counts.cpu().numpy().astype(np.float64), sample_len, init_pixels, update_batches,
                         float(objective))


def _initial_fit(sample: np.ndarray, init_pixels: int, config: ClusterConfig, seed: int,
                 use_gpu: bool) -> tuple[torch.Tensor, torch.Tensor, float]:
    """faiss k-means on the sample; counts scaled to the init pixels the sample stands for."""
    if len(sample) < config.num_clusters:
        raise ValueError(f"picie clustering: K={config.num_clusters} is larger than the {len(sample)} sampled pixels")
    kmeans = KMeansConfig(num_clusters=config.num_clusters, metric="cosine", num_iters=config.num_iters,
                          num_redo=config.num_redo,
                          sample_size=len(sample), seed=int(seed) % (2**31))
    centroids = torch.from_numpy(fit_kmeans(sample, kmeans, use_gpu=use_gpu))
    vectors = torch.from_numpy(sample)
    assign, best = nearest(vectors, centroids)
    counts = torch.bincount(assign, minlength=config.num_clusters).double() * (init_pixels / len(sample))
    return centroids, counts, float((1 - best).mean())


@torch.no_grad()
def assign_labels(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest-centroid (cosine) labels of feature maps (B, D, h, w) -> int64 (B, h, w)."""
    batch, _, height, width = features.shape
    index, _ = nearest(flatten_pixels(features), centroids.to(features.device).float())
    return index.view(batch, height, width)


def cluster_entropy(counts: np.ndarray) -> float:
    """Entropy of the cluster-size distribution over log K, in [0, 1] (1 = all clusters the same size)."""
    counts = np.asarray(counts, dtype=np.float64)
    if len(counts) < 2 or counts.sum() <= 0:
        return 0.0
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum() / np.log(len(counts)))
