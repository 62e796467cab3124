"""Tests of faiss k-means, centroid scores and nearest-centroid labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unseg.core.kmeans import METRICS, KMeansConfig, centroid_scores, fit_kmeans, l2_normalise, predict_labels

D, K, PER = 16, 4, 150


def blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """4 well separated Gaussian blobs in 16-D, centred on orthogonal directions (separated in angle and distance)."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((K, D), np.float32)
    for k in range(K):
        centres[k, 4 * k:4 * k + 4] = 10.0
    truth = np.repeat(np.arange(K), PER)
    x = centres[truth] + rng.normal(0, 0.7, (K * PER, D)).astype(np.float32)
    order = rng.permutation(len(x))
    return x[order], truth[order]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when a and b are the same partition up to renaming the parts."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def assign(x: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
    features = torch.from_numpy(x.T.copy()).reshape(1, D, len(x), 1)
    return predict_labels(features, torch.from_numpy(centroids), metric)[0, :, 0].numpy()


def test_same_partition_helper() -> None:
    assert same_partition(np.array([0, 0, 1, 2]), np.array([5, 5, 3, 1]))
    assert not same_partition(np.array([0, 0, 1, 2]), np.array([5, 4, 3, 1]))
    assert not same_partition(np.array([0, 1, 1, 2]), np.array([5, 5, 3, 1]))


@pytest.mark.parametrize("metric", METRICS)
def test_planted_clusters_are_recovered(metric: str) -> None:
    x, truth = blobs()
    centroids = fit_kmeans(x, KMeansConfig(num_clusters=K, metric=metric, num_iters=20, num_redo=3, seed=1))
    assert centroids.shape == (K, D) and centroids.dtype == np.float32
    labels = assign(x, centroids, metric)
    assert same_partition(labels, truth)
    assert sorted(np.bincount(labels, minlength=K).tolist()) == [PER] * K
    if metric == "euclidean":
        # each centroid sits on its blob's mean
        for k in range(K):
            np.testing.assert_allclose(centroids[k], x[labels == k].mean(0), atol=1e-3)
    else:
        np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
        for k in range(K):
            mean = l2_normalise(x[labels == k]).mean(0)
            np.testing.assert_allclose(centroids[k], mean / np.linalg.norm(mean), atol=1e-3)


def test_cosine_ignores_vector_length() -> None:
    x, truth = blobs()
    scale = np.random.default_rng(2).uniform(0.1, 50, (len(x), 1)).astype(np.float32)
    centroids = fit_kmeans(x * scale, KMeansConfig(num_clusters=K, metric="cosine", num_redo=3, seed=0))
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    assert same_partition(assign(x * scale, centroids, "cosine"), truth)


def test_sample_size_bounds_the_fit() -> None:
    x, truth = blobs()
    centroids = fit_kmeans(x, KMeansConfig(num_clusters=K, metric="euclidean", num_redo=3, sample_size=100, seed=0))
    assert same_partition(assign(x, centroids, "euclidean"), truth)


@pytest.mark.parametrize("metric", METRICS)
def test_determinism_with_the_same_seed(metric: str) -> None:
    x, _ = blobs(seed=3)
    x = x + np.random.default_rng(4).normal(0, 3, x.shape).astype(np.float32)  # overlapping: the seed matters
    cfg = KMeansConfig(num_clusters=6, metric=metric, num_iters=10, seed=5)
    np.testing.assert_array_equal(fit_kmeans(x, cfg), fit_kmeans(x, cfg))


def test_fewer_vectors_than_clusters() -> None:
    with pytest.raises(ValueError, match="K=5 needs at least K vectors, got 4"):
        fit_kmeans(np.zeros((4, 3), np.float32), KMeansConfig(num_clusters=5))


def test_vectors_must_be_2d() -> None:
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        fit_kmeans(np.zeros((4, 3, 2), np.float32), KMeansConfig(num_clusters=2))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"metric": "manhattan"}, "^kmeans metric 'manhattan'; valid: cosine, euclidean$"),
    ({"num_clusters": 0}, "^kmeans num_clusters must be >= 1, got 0$"),
    ({"num_iters": 0}, "^kmeans num_iters and num_redo must be >= 1, got 0, 1$"),
    ({"num_redo": 0}, "^kmeans num_iters and num_redo must be >= 1, got 30, 0$"),
    ({"num_iters": -1, "num_redo": -2}, "^kmeans num_iters and num_redo must be >= 1, got -1, -2$"),
])
def test_config_validation(kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        KMeansConfig(**{"num_clusters": 3, **kwargs})


def test_config_boundaries_are_valid() -> None:
    """One cluster, one iteration and one restart are the smallest valid settings; the defaults are the documented
    ones."""
    config = KMeansConfig(num_clusters=1, num_iters=1, num_redo=1)
    assert (config.num_clusters, config.num_iters, config.num_redo) == (1, 1, 1)
    assert KMeansConfig(num_clusters=2) == KMeansConfig(2, "cosine", 30, 1, 100_000, 0)


def test_bad_metric_in_scores() -> None:
    with pytest.raises(ValueError, match="metric 'dot'; valid: cosine, euclidean"):
        centroid_scores(torch.zeros(1, 2, 1, 1), torch.zeros(3, 2), "dot")


def test_cosine_scores_by_hand() -> None:
    # one image, D=2, a 1 x 2 grid: pixel vectors (3, 4) and (0, -2); centroids (1, 0) and (0.6, 0.8)
    features = torch.tensor([[[[3.0, 0.0]], [[4.0, -2.0]]]])
    centroids = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    scores = centroid_scores(features, centroids, "cosine")
    assert scores.shape == (1, 2, 1, 2)
    # normalised pixels: (0.6, 0.8) and (0, -1)
    expected = torch.tensor([[[[0.6, 0.0]], [[0.36 + 0.64, -0.8]]]])
    torch.testing.assert_close(scores, expected)


def test_euclidean_scores_are_negative_squared_distances() -> None:
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(2, 5, 3, 4, generator=gen)
    centroids = torch.randn(6, 5, generator=gen)
    scores = centroid_scores(features, centroids, "euclidean")
    assert scores.shape == (2, 6, 3, 4)
    pixels = features.permute(0, 2, 3, 1).reshape(-1, 5)
    distances = torch.cdist(pixels, centroids) ** 2
    expected = -distances.reshape(2, 3, 4, 6).permute(0, 3, 1, 2)
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)
    # argmax is the nearest centroid
    nearest = distances.argmin(1).reshape(2, 3, 4)
    assert torch.equal(scores.argmax(1), nearest)
    assert torch.equal(predict_labels(features, centroids, "euclidean"), nearest)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("size", [None, (3, 4), (12, 16), (7, 9)])
def test_predict_labels_size_and_range(metric: str, size) -> None:
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(2, 5, 3, 4, generator=gen).half()
    centroids = torch.randn(6, 5, generator=gen)
    labels = predict_labels(features, centroids, metric, size=size)
    assert labels.dtype == torch.int64
    assert tuple(labels.shape) == (2, *(size or (3, 4)))
    assert int(labels.min()) >= 0 and int(labels.max()) < 6


def test_predict_labels_upsamples_scores_not_labels() -> None:
    # two pixels, left nearest centroid 0, right nearest centroid 1: upsampled x4, the boundary is in the middle
    features = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    centroids = torch.eye(2)
    labels = predict_labels(features, centroids, "cosine", size=(4, 8))
    assert labels.shape == (1, 4, 8)
    assert torch.equal(labels[0], torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]] * 4))


def test_use_gpu_without_a_gpu_build_falls_back_to_cpu(caplog: pytest.LogCaptureFixture) -> None:
    import faiss

    if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        pytest.skip("faiss sees a GPU here")
    x, _ = blobs()
    cfg = KMeansConfig(num_clusters=K, metric="cosine", num_iters=5, seed=0)
    with caplog.at_level("WARNING", logger="unseg.core.kmeans"):
        on_gpu = fit_kmeans(x, cfg, use_gpu=True)
    assert "runs on the CPU" in caplog.text
    np.testing.assert_array_equal(on_gpu, fit_kmeans(x, cfg))


# A row of three cells whose middle cell is only just nearest centroid 1 while its neighbours are strongly nearest
# centroid 0. Upsampled x4 (align_corners=False), output pixel j reads input x = (j + 0.5) / 4 - 0.5, so every output
# pixel mixes the middle cell with at least 1/8 of a neighbour: bilinear SCORES put all 12 pixels on centroid 0, while
# upsampling the LABELS (nearest) would give [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0].
WEAK_MIDDLE = {
    "linear": torch.tensor([[10.0, 0.0, 10.0], [0.0, 1.0, 0.0]]),
    "cosine": torch.tensor([[1.0, 0.7, 1.0], [0.0, 0.714, 0.0]]),
    "euclidean": torch.tensor([[1.0, 0.48, 1.0], [0.0, 0.52, 0.0]]),
}


@pytest.mark.parametrize("metric", ["linear", *METRICS])
def test_predict_labels_upsamples_scores_where_label_upsampling_differs(metric: str) -> None:
    features = WEAK_MIDDLE[metric].reshape(1, 2, 1, 3)
    centroids = torch.eye(2)
    assert torch.equal(predict_labels(features, centroids, metric)[0, 0], torch.tensor([0, 1, 0]))
    labels = predict_labels(features, centroids, metric, size=(1, 12))
    assert torch.equal(labels[0, 0], torch.zeros(12, dtype=torch.int64))


def test_linear_scores_add_the_bias_per_class() -> None:
    """The probe's "linear" metric is a 1x1 convolution: raw dot product plus the class bias."""
    features = torch.tensor([[[[2.0]], [[3.0]]]])  # (1, 2, 1, 1)
    weights = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    scores = centroid_scores(features, weights, "linear", torch.tensor([0.5, -1.0, 0.0]))
    torch.testing.assert_close(scores[0, :, 0, 0], torch.tensor([2.5, 2.0, 5.0]))


def test_predict_labels_passes_the_bias_on() -> None:
    """The probe's bias reaches the scores before the argmax, at feature and at evaluation resolution: a bias of
    +3 on class 1 wins every pixel whose raw scores favour class 0 by less than 3."""
    features = torch.tensor([[[[2.0, 5.0]], [[0.0, 0.0]]]])  # (1, 2, 1, 2): raw scores (2, 0) and (5, 0)
    bias = torch.tensor([0.0, 3.0])
    assert torch.equal(predict_labels(features, torch.eye(2), "linear", bias=bias)[0, 0], torch.tensor([1, 0]))
    assert torch.equal(predict_labels(features, torch.eye(2), "linear", (1, 4), bias)[0, 0], torch.tensor([1, 1, 0, 0]))


def test_the_seed_changes_the_fit() -> None:
    """Different seeds draw different samples (sample_size < N) and different initial centroids: the centroids
    differ, while each seed's fit is reproducible."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 8)).astype(np.float32)  # no cluster structure: the optimum depends on the start
    fits = [fit_kmeans(x, KMeansConfig(num_clusters=5, sample_size=300, num_iters=10, seed=s)) for s in (0, 1, 0)]
    np.testing.assert_array_equal(fits[0], fits[2])
    assert not np.allclose(fits[0], fits[1], atol=1e-3)


def test_l2_normalise_by_hand() -> None:
    """Rows scaled to unit length (also rows shorter than 1); zero rows stay zero; float32."""
    out = l2_normalise(np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
    assert out.dtype == np.float32


@pytest.mark.parametrize("metric", METRICS)
def test_centroids_are_unit_for_cosine_and_blob_means_for_euclidean(metric: str) -> None:
    """Spherical centroids come back L2-normalised; Euclidean ones are means of the data (blob centres lie 20 from
    the origin), not normalised."""
    x, _ = blobs()
    centroids = fit_kmeans(x, KMeansConfig(num_clusters=K, metric=metric, num_iters=10, seed=0))
    assert centroids.dtype == np.float32 and centroids.shape == (K, D)
    lengths = np.linalg.norm(centroids, axis=1)
    if metric == "cosine":
        np.testing.assert_allclose(lengths, 1.0, rtol=1e-5)
    else:
        assert (lengths > 10).all()


def test_exactly_k_vectors_and_no_gpu_warning_unless_asked(caplog: pytest.LogCaptureFixture) -> None:
    """K vectors are enough for K clusters; without use_gpu nothing is said about GPUs."""
    x, _ = blobs()
    with caplog.at_level("WARNING", logger="unseg.core.kmeans"):
        centroids = fit_kmeans(x[:K], KMeansConfig(num_clusters=K, metric="euclidean", num_iters=5, seed=0))
    assert centroids.shape == (K, D)
    assert "GPU" not in caplog.text


class FaissSpy:
    """Stands in for faiss.Kmeans: records the constructor's arguments and the training vectors, then runs the real
    faiss k-means on them."""

    calls: list[dict] = []
    real = None  # faiss.Kmeans, set by the fixture before it patches

    def __init__(self, d: int, k: int, **kwargs) -> None:
        self.record = {"d": d, "k": k, **kwargs}
        FaissSpy.calls.append(self.record)
        self._real = FaissSpy.real(d, k, **kwargs)

    def train(self, x: np.ndarray) -> None:
        self.record["x"] = x.copy()
        self._real.train(x)
        self.obj, self.centroids = self._real.obj, self._real.centroids


@pytest.fixture
def faiss_spy(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    import unseg.core.kmeans as kmeans_module

    FaissSpy.calls, FaissSpy.real = [], kmeans_module.faiss.Kmeans
    monkeypatch.setattr(kmeans_module.faiss, "Kmeans", FaissSpy)
    return FaissSpy.calls


@pytest.mark.parametrize("metric", METRICS)
def test_faiss_receives_every_setting(faiss_spy: list[dict], metric: str) -> None:
    """Iterations, restarts, the metric (spherical), the seed, CPU and quiet reach faiss as configured; faiss may keep
    every sampled vector (its own default subsamples at 256 per centroid)."""
    x, _ = blobs()
    fit_kmeans(x, KMeansConfig(num_clusters=2, metric=metric, num_iters=7, num_redo=2, sample_size=590, seed=11))
    (call,) = faiss_spy
    assert {key: value for key, value in call.items() if key != "x"} == {
        "d": D, "k": 2, "niter": 7, "nredo": 2, "spherical": metric == "cosine", "seed": 11, "gpu": False,
        "verbose": False, "max_points_per_centroid": 590 // 2 + 1}
    assert call["x"].shape == (590, D)


def test_faiss_keeps_its_floor_of_256_points_per_centroid(faiss_spy: list[dict]) -> None:
    x, _ = blobs()
    fit_kmeans(x, KMeansConfig(num_clusters=K, metric="euclidean", num_iters=2))
    assert faiss_spy[0]["max_points_per_centroid"] == 256  # 600 // 4 + 1 = 151 < 256


def test_no_sample_when_every_vector_fits(faiss_spy: list[dict]) -> None:
    """sample_size >= N: faiss trains on the vectors as given, in their order (L2-normalised for cosine)."""
    x, _ = blobs()
    fit_kmeans(x, KMeansConfig(num_clusters=K, metric="euclidean", num_iters=2, sample_size=len(x)))
    fit_kmeans(x, KMeansConfig(num_clusters=K, metric="cosine", num_iters=2, sample_size=len(x) + 1))
    np.testing.assert_array_equal(faiss_spy[0]["x"], x)
    np.testing.assert_allclose(faiss_spy[1]["x"], x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-6)


def test_the_sample_is_distinct_rows_chosen_by_the_seed(faiss_spy: list[dict]) -> None:
    """sample_size < N: faiss trains on sample_size distinct input rows (drawn without replacement); the seed chooses
    which: the same seed the same rows, another seed other rows."""
    x = np.arange(200 * 2, dtype=np.float32).reshape(200, 2)  # every row distinct
    for seed in (0, 0, 1):
        fit_kmeans(x, KMeansConfig(num_clusters=2, metric="euclidean", num_iters=1, sample_size=150, seed=seed))
    rows = [{tuple(row) for row in call["x"].tolist()} for call in faiss_spy]
    every_row = {tuple(row) for row in x.tolist()}
    for call, chosen in zip(faiss_spy, rows, strict=True):
        assert call["x"].shape == (150, 2) and len(chosen) == 150 and chosen <= every_row
    np.testing.assert_array_equal(faiss_spy[0]["x"], faiss_spy[1]["x"])
    assert rows[0] != rows[2]


def test_float64_and_float16_vectors_reach_faiss_as_float32(faiss_spy: list[dict]) -> None:
    """faiss trains on float32 only: other float types are converted (Euclidean has no normalisation to do it)."""
    x, truth = blobs()
    for dtype in (np.float64, np.float16):
        centroids = fit_kmeans(x.astype(dtype), KMeansConfig(num_clusters=K, metric="euclidean", num_redo=3))
        assert faiss_spy[-1]["x"].dtype == np.float32 and centroids.dtype == np.float32
        assert same_partition(assign(x, centroids, "euclidean"), truth)


class FakeGpuKmeans:
    """faiss.Kmeans as a GPU build would take it: records its arguments, returns the first K vectors."""

    calls: list[dict] = []

    def __init__(self, d: int, k: int, **kwargs) -> None:
        self.k, self.obj = k, [0.0]
        FakeGpuKmeans.calls.append(kwargs)

    def train(self, x: np.ndarray) -> None:
        self.centroids = x[:self.k]


@pytest.mark.parametrize(("gpus", "use_gpu", "expected", "warned"), [
    (1, None, True, False),    # one GPU is enough; None means "when there is one"
    (2, None, True, False),
    (1, False, False, False),  # asked not to
    (0, None, False, False),   # none: the CPU, quietly
    (0, True, False, True),    # asked for and none: the CPU, with a warning
])
def test_gpu_kmeans_whenever_faiss_sees_a_gpu(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                             gpus: int, use_gpu: bool | None, expected: bool, warned: bool) -> None:
    import unseg.core.kmeans as kmeans_module

    FakeGpuKmeans.calls = []
    monkeypatch.setattr(kmeans_module.faiss, "Kmeans", FakeGpuKmeans)
    monkeypatch.setattr(kmeans_module.faiss, "get_num_gpus", lambda: gpus, raising=False)
    x, _ = blobs()
    with caplog.at_level("WARNING", logger="unseg.core.kmeans"):
        fit_kmeans(x, KMeansConfig(num_clusters=K, metric="euclidean"), use_gpu=use_gpu)
    assert FakeGpuKmeans.calls[0]["gpu"] is expected
    assert ("runs on the CPU" in caplog.text) is warned


def test_a_cpu_build_of_faiss_counts_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    import unseg.core.kmeans as kmeans_module

    monkeypatch.delattr(kmeans_module.faiss, "get_num_gpus", raising=False)
    assert kmeans_module.faiss_gpus() == 0
