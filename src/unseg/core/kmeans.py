"""K-means with faiss (GPU when a faiss GPU build and CUDA are present, CPU otherwise) and nearest-centroid labels.

Spherical k-means (cosine) on L2-normalised vectors is what PiCIE [0] and the PriMaPs baseline [1] use on features;
plain Euclidean k-means is the RGB floor.

[0] https://arxiv.org/abs/2103.17070, https://github.com/janghyuncho/PiCIE
[1] https://arxiv.org/abs/2404.16818, https://github.com/visinf/primaps
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

try:
    import faiss
except ImportError as err:  # pragma: no cover - an install without the cpu or gpu extra
    raise ImportError("faiss is not installed: install the project with its cpu or gpu extra "
                      "(`bash scripts/setup.sh`, or `pip install -e .[cpu]` / `.[gpu]`)") from err

logger = logging.getLogger(__name__)

METRICS = ("cosine", "euclidean")
# "linear": a linear classifier (the supervised probe), weights in place of centroids
SCORE_METRICS = (*METRICS, "linear")


@dataclass(frozen=True)
class KMeansConfig:
    """Parameters of one k-means fit.

    Attributes:
        num_clusters: K.
        metric: "cosine" (L2-normalise vectors, spherical centroids) or "euclidean".
        num_iters: Lloyd iterations.
        num_redo: restarts; the best objective wins.
        sample_size: vectors drawn for the fit (bounded memory; faiss subsamples further at 256 per centroid).
        seed: seeds the sample and faiss.
    """

    num_clusters: int
    metric: str = "cosine"
    num_iters: int = 30
    num_redo: int = 1
    sample_size: int = 100_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"kmeans metric {self.metric!r}; valid: {', '.join(METRICS)}")
        if self.num_clusters < 1:
            raise ValueError(f"kmeans num_clusters must be >= 1, got {self.num_clusters}")
        if self.num_iters < 1 or self.num_redo < 1:
            raise ValueError(f"kmeans num_iters and num_redo must be >= 1, got {self.num_iters}, {self.num_redo}")


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of x (N, D) scaled to unit length (zero rows stay zero)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def faiss_gpus() -> int:
    """GPUs faiss can use: 0 with the CPU build (it has no get_num_gpus) or without a GPU."""
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def fit_kmeans(vectors: np.ndarray, config: KMeansConfig, use_gpu: bool | None = None) -> np.ndarray:
    """Fits K centroids to vectors.

    Args:
        vectors: float (N, D); normalised here when the metric is cosine.
        config: see KMeansConfig.
        use_gpu: run faiss on the GPUs; None: when faiss has GPU support and sees a GPU; True: warn when not.

    Returns:
        float32 centroids (K, D), unit length for the cosine metric.

    Raises:
        ValueError: fewer vectors than clusters.
    """
    if vectors.ndim != 2:
        raise ValueError(f"kmeans expects vectors (N, D), got shape {vectors.shape}")
    if len(vectors) < config.num_clusters:
        raise ValueError(f"kmeans with K={config.num_clusters} needs at least K vectors, got {len(vectors)}")
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(x) > config.sample_size:
        rng = np.random.default_rng(config.seed)
        x = x[rng.choice(len(x), config.sample_size, replace=False)]
    spherical = config.metric == "cosine"
    if spherical:
        x = l2_normalise(x)
    gpu = use_gpu is not False and faiss_gpus() > 0
    if use_gpu and not gpu:
        logger.warning("faiss GPU build or GPU not found: k-means runs on the CPU")
    kmeans = faiss.Kmeans(x.shape[1], config.num_clusters, niter=config.num_iters, nredo=config.num_redo,
                          spherical=spherical, seed=config.seed, gpu=gpu, verbose=False,
                          max_points_per_centroid=max(256, len(x) // config.num_clusters + 1))
    kmeans.train(x)
    logger.info("k-means K=%d on %d x %d vectors (%s, %s): objective %.4g", config.num_clusters, *x.shape,
                config.metric, "gpu" if gpu else "cpu", kmeans.obj[-1])
    centroids = np.asarray(kmeans.centroids, dtype=np.float32)
    return l2_normalise(centroids) if spherical else centroids


def centroid_scores(features: torch.Tensor, centroids: torch.Tensor, metric: str,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """Scores of every centroid at every pixel; higher is nearer.

    Args:
        features: (B, D, h, w).
        centroids: (K, D).
        metric: "cosine" (cosine similarity of normalised features), "euclidean" (negative squared distance) or
            "linear" (raw dot product plus `bias`: a 1x1 convolution).
        bias: (K,), only with "linear".

    Returns:
        (B, K, h, w) scores.
    """
    if metric == "linear":
        scores = torch.einsum("bdhw,kd->bkhw", features, centroids)
        return scores if bias is None else scores + bias[None, :, None, None]
    if metric == "cosine":
        # b: batch, d: channel, k: cluster, h/w: grid
        return torch.einsum("bdhw,kd->bkhw", F.normalize(features, dim=1), centroids)
    if metric == "euclidean":
        dots = torch.einsum("bdhw,kd->bkhw", features, centroids)
        return 2 * dots - (centroids**2).sum(1)[None, :, None, None] - (features**2).sum(1, keepdim=True)
    raise ValueError(f"metric {metric!r}; valid: {', '.join(SCORE_METRICS)}")


def upsampled_scores(features: torch.Tensor, centroids: torch.Tensor, metric: str,
                     size: tuple[int, int] | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """centroid_scores in float32, upsampled bilinearly to `size` (None keeps (h, w)): (B, K, H, W)."""
    scores = centroid_scores(features.float(), centroids.float(), metric, None if bias is None else bias.float())
    if size is not None and tuple(scores.shape[-2:]) != tuple(size):
        scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
    return scores


def predict_labels(features: torch.Tensor, centroids: torch.Tensor, metric: str,
                   size: tuple[int, int] | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Nearest-centroid labels, with scores upsampled bilinearly to `size` before the argmax (PiCIE's evaluation).

    Args:
        features: (B, D, h, w).
        centroids: (K, D).
        metric: see centroid_scores.
        size: output (H, W); None keeps (h, w).
        bias: (K,), for the "linear" metric.

    Returns:
        int64 labels (B, H, W) in [0, K).
    """
    return upsampled_scores(features, centroids, metric, size, bias).argmax(1)
