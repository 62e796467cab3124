"""PiCIE loss on tiny hand-made tensors, and the class-weight options."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unseg.core.picie.loss import LossConfig, class_weights, picie_loss

# one image, D = 2, a 1 x 2 grid
F1 = torch.tensor([[3.0, 1.0], [4.0, 0.0]]).view(1, 2, 1, 2)  # pixels (3, 4) -> (0.6, 0.8) and (1, 0)
F2 = torch.tensor([[0.0, 1.0], [2.0, 1.0]]).view(1, 2, 1, 2)  # pixels (0, 2) -> (0, 1) and (1, 1) / sqrt 2
C1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
C2 = torch.tensor([[0.6, 0.8], [0.8, -0.6]])
Y1 = torch.tensor([[[1, 0]]])
Y2 = torch.tensor([[[0, 1]]])


def ce(pixels: list[tuple[float, float]], centroids: list[tuple[float, float]], labels: list[int],
       weights: list[float] | None = None) -> float:
    """Cross-entropy of cosine logits, written out: sum_i w_yi * (-log softmax_yi) / sum_i w_yi."""
    total, norm = 0.0, 0.0
    for (a, b), y in zip(pixels, labels, strict=True):
        length = math.hypot(a, b)
        logits = [(a * c + b * d) / length for c, d in centroids]
        nll = -(logits[y] - math.log(sum(math.exp(v) for v in logits)))
        w = 1.0 if weights is None else weights[y]
        total, norm = total + w * nll, norm + w
    return total / norm


@pytest.mark.parametrize("w1, w2", [(None, None), ([1.0, 3.0], [2.0, 0.5])])
def test_loss_matches_hand_computation(w1: list[float] | None, w2: list[float] | None) -> None:
    p1, p2 = [(3.0, 4.0), (1.0, 0.0)], [(0.0, 2.0), (1.0, 1.0)]
    c1, c2 = [(1.0, 0.0), (0.0, 1.0)], [(0.6, 0.8), (0.8, -0.6)]
    y1, y2 = [1, 0], [0, 1]
    within = (ce(p1, c1, y1, w1) + ce(p2, c2, y2, w2)) / 2
    cross = (ce(p1, c2, y2, w2) + ce(p2, c1, y1, w1)) / 2
    terms = picie_loss(F1, F2, Y1, Y2, C1, C2, None if w1 is None else torch.tensor(w1),
                       None if w2 is None else torch.tensor(w2))
    assert terms.within.item() == pytest.approx(within, rel=1e-5)
    assert terms.cross.item() == pytest.approx(cross, rel=1e-5)
    assert terms.loss.item() == pytest.approx((within + cross) / 2, rel=1e-5)


def test_gradient_reaches_features_not_centroids() -> None:
    f1, c1 = F1.clone().requires_grad_(True), C1.clone().requires_grad_(True)
    picie_loss(f1, F2, Y1, Y2, c1, C2).loss.backward()
    assert f1.grad is not None and f1.grad.abs().sum() > 0
    assert c1.grad is None


def test_class_weight_options() -> None:
    counts = np.array([10, 30, 0, 60])
    inverse = class_weights(counts, "inverse")
    frequency = class_weights(counts, "frequency")
    assert class_weights(counts, "none") is None
    # normalised to mean 1 over non-empty clusters; empty clusters weigh 0
    expected = np.array([1 / 10, 1 / 30, 0, 1 / 60]) / np.mean([1 / 10, 1 / 30, 1 / 60])
    np.testing.assert_allclose(inverse.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(frequency.numpy(), np.array([10, 30, 0, 60]) / np.mean([10, 30, 60]), rtol=1e-6)
    # inverse weights: every non-empty cluster's pixels weigh the same in total
    totals = inverse.numpy() * counts
    np.testing.assert_allclose(totals[counts > 0], totals[0])


def test_unknown_class_weight_option_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="inverse, frequency, none"):
        LossConfig(class_weights="balanced")
    with pytest.raises(ValueError, match="inverse, frequency, none"):
        class_weights(np.ones(3), "balanced")


def test_class_weights_count_single_pixel_clusters_and_are_float32() -> None:
    """A cluster with one pixel is present (weighs in), only empty ones get 0; weights come as float32."""
    counts = np.array([1, 3, 0])
    inverse = class_weights(counts, "inverse")
    assert inverse.dtype == torch.float32
    np.testing.assert_allclose(inverse.numpy(), np.array([1.0, 1 / 3, 0.0]) / np.mean([1.0, 1 / 3]), rtol=1e-6)
    np.testing.assert_allclose(class_weights(counts, "frequency").numpy(), [0.5, 1.5, 0.0], rtol=1e-6)


def test_float32_class_weights_serve_float64_features() -> None:
    """The weights follow the features' dtype: the same loss in float64 as in float32."""
    w1, w2 = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.5])
    single = picie_loss(F1, F2, Y1, Y2, C1, C2, w1, w2)
    double = picie_loss(F1.double(), F2.double(), Y1, Y2, C1.double(), C2.double(), w1, w2)
    assert double.loss.dtype == torch.float64
    assert double.loss.item() == pytest.approx(single.loss.item(), rel=1e-6)
