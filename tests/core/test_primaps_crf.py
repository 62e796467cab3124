"""DenseCRF over label logits: runs, keeps shapes, returns marginals, and cleans up label noise along colours."""

from __future__ import annotations

import numpy as np
import pytest

from unseg.core.primaps.crf import CRFConfig, dense_crf, dense_crf_batch


def two_halves(noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 24x32 image, red left / blue right; logits favour the right label by 1 but are flipped on `noise` pixels."""
    rng = np.random.default_rng(seed)
    image = np.zeros((24, 32, 3), np.uint8)
    image[:, :16] = (220, 30, 30)
    image[:, 16:] = (30, 30, 220)
    truth = np.zeros((24, 32), np.int64)
    truth[:, 16:] = 1
    noisy = np.where(rng.random(truth.shape) < noise, 1 - truth, truth)
    logits = np.stack([(noisy == 0), (noisy == 1)]).astype(np.float32)
    return image, logits, truth


def test_crf_keeps_shapes_and_returns_marginals() -> None:
    image, logits, _ = two_halves(0.0)
    out = dense_crf(image, np.log(np.full((3, 24, 32), 1 / 3, np.float32)) + 0.1 * logits.repeat(2, 0)[:3], CRFConfig())
    assert out.shape == (3, 24, 32) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-4)


def test_crf_removes_label_noise_along_colour_edges() -> None:
    image, logits, truth = two_halves(0.2)
    before = (logits.argmax(0) == truth).mean()
    after = (dense_crf(image, logits, CRFConfig()).argmax(0) == truth).mean()
    assert before < 0.85 and after > 0.99


def test_crf_accepts_read_only_inputs() -> None:
    image, logits, _ = two_halves(0.1)
    image.setflags(write=False)
    logits.setflags(write=False)
    assert dense_crf(image, logits, CRFConfig(iterations=2)).shape == logits.shape


@pytest.mark.parametrize("bad", [{"iterations": 0}, {"gaussian_sxy": 0}, {"bilateral_srgb": -1}])
def test_bad_crf_settings_raise(bad: dict) -> None:
    with pytest.raises(ValueError, match="primaps.crf"):
        CRFConfig(**bad)


def test_bad_crf_inputs_raise() -> None:
    image, logits, _ = two_halves(0.0)
    with pytest.raises(ValueError, match="image must be uint8"):
        dense_crf(image[:10], logits, CRFConfig())
    logits[0, 0, 0] = -np.inf
    with pytest.raises(ValueError, match="finite"):
        dense_crf(image, logits, CRFConfig())


def test_dense_crf_batch_in_worker_processes_matches_one_by_one() -> None:
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 255, (20, 24, 3), dtype=np.uint8) for _ in range(5)]
    logits = [rng.normal(size=(3, 20, 24)).astype(np.float32) for _ in range(5)]
    serial = dense_crf_batch(images, logits, CRFConfig(workers=1))
    parallel = dense_crf_batch(images, logits, CRFConfig(workers=2))
    assert len(parallel) == 5
    for a, b, image, lg in zip(serial, parallel, images, logits, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, dense_crf(image, lg, CRFConfig()))
    assert dense_crf_batch([], [], CRFConfig(workers=2)) == []
    with pytest.raises(ValueError, match="workers"):
        CRFConfig(workers=-1)
