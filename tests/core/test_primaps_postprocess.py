"""PriMaPs post-processing on tiny arrays against hand values: median filter, x10 clamp, background, log-softmax."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unseg.core.primaps.postprocess import labels_from_scores, masks_to_logits, median3x3, upsample


def test_median3x3_with_reflect_padding_by_hand() -> None:
    x = torch.arange(1.0, 10.0).reshape(3, 3)
    # reflect padding mirrors without repeating the edge: row -1 is row 1, column -1 is column 1
    expected = torch.tensor([[4.0, 4.0, 5.0], [5.0, 5.0, 5.0], [5.0, 6.0, 6.0]])
    torch.testing.assert_close(median3x3(x), expected)


def test_median3x3_removes_an_isolated_cell_and_keeps_leading_dims() -> None:
    x = torch.zeros(2, 3, 5, 5)
    x[1, 2, 2, 2] = 1.0
    x[0, 0, :, :2] = 1.0  # a two-column band survives
    out = median3x3(x)
    assert out.shape == x.shape
    assert float(out[1, 2].abs().sum()) == 0.0
    torch.testing.assert_close(out[0, 0], x[0, 0])


def test_masks_to_logits_by_hand() -> None:
    """4x3 grid; mask 0 = 0.5 on rows 0-1, mask 1 = 0.05 on rows 2-3 (both unchanged by the median filter).

    x10 and clamp: mask 0 -> 1.0, mask 1 -> 0.5. Mean of the non-zero values: (6 * 1.0 + 6 * 0.5) / 12 = 0.75.
    Background = clamp(0.75 - sum, 0, 1): 0 on rows 0-1, 0.25 on rows 2-3. A third, padding slot is -inf.
    """
    masks = torch.zeros(1, 3, 4, 3)
    masks[0, 0, :2] = 0.5
    masks[0, 1, 2:] = 0.05
    masks[0, 2] = 0.9  # beyond counts: ignored
    out = masks_to_logits(masks, torch.tensor([2]))
    assert out.shape == (1, 4, 4, 3)
    top = [0.0, 1.0, 0.0]
    bottom = [0.25, 0.0, 0.5]
    for row, values in ((0, top), (1, top), (2, bottom), (3, bottom)):
        norm = math.log(sum(math.exp(v) for v in values))
        expected = torch.tensor([v - norm for v in values]).view(3, 1).expand(3, 3)
        torch.testing.assert_close(out[0, :3, row], expected)
    assert torch.isneginf(out[0, 3]).all()


def test_image_without_masks_is_background() -> None:
    out = masks_to_logits(torch.zeros(2, 2, 3, 3), torch.tensor([0, 1]))
    assert (out[0, 0] == 0).all() and torch.isneginf(out[0, 1:]).all()
    # image 1: one empty mask -> mean of no value is 0, background clamp(0 - 0) = 0: both channels tie at log(1/2)
    torch.testing.assert_close(out[1, :2], torch.full((2, 3, 3), math.log(0.5)))


def test_upsample_keeps_dead_channels_dead() -> None:
    logits = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]], [[float("-inf")] * 2] * 2]])
    up = upsample(logits, (4, 4))
    assert up.shape == (1, 2, 4, 4)
    assert torch.isneginf(up[0, 1]).all() and torch.isfinite(up[0, 0]).all()


def test_labels_from_scores_background_is_ignore() -> None:
    scores = torch.tensor([[[[0.9, 0.1]], [[0.05, 0.2]], [[0.05, 0.7]]]])  # (1, 3, 1, 2)
    labels = labels_from_scores(scores)
    assert labels.dtype == torch.uint8
    np.testing.assert_array_equal(labels.numpy(), [[[255, 1]]])


@pytest.mark.parametrize("size", [(1, 1), (3, 1)])
def test_median_needs_two_cells_per_side(size: tuple[int, int]) -> None:
    with pytest.raises((RuntimeError, ValueError)):
        median3x3(torch.zeros(*size))


def test_background_mean_is_per_image_and_counts_a_single_cell() -> None:
    """The mean of the non-zero mask values is taken per image, over however many cells (here exactly one).

    Image 0: a plus of five cells of 0.08 in a 5x5 grid; the median keeps only its centre (5 of 9 non-zero there,
    4 of 9 on the arms), x10: 0.8, so the mean is 0.8 over one cell and the background 0.8 - 0 = 0.8 off the centre,
    0 at it. Image 1: mask 0 = 1.0 everywhere (after x10 and clamp), mean 1, background 0 everywhere.
    """
    masks = torch.zeros(2, 1, 5, 5)
    masks[0, 0, 2, 1:4] = 0.08
    masks[0, 0, 1:4, 2] = 0.08
    masks[1, 0] = 0.5
    out = masks_to_logits(masks, torch.tensor([1, 1])).exp()
    expected_bg = torch.full((5, 5), math.exp(0.8) / (math.exp(0.8) + 1.0))
    expected_bg[2, 2] = 1.0 / (1.0 + math.exp(0.8))
    torch.testing.assert_close(out[0, 0], expected_bg)
    torch.testing.assert_close(out[1, 0], torch.full((5, 5), 1.0 / (1.0 + math.e)))


def test_scaled_masks_are_clamped_below_at_zero() -> None:
    """clamp(10 m, 0, 1): a (out-of-range) negative mask value counts as 0, not as a negative logit."""
    masks = torch.zeros(1, 2, 3, 3)
    masks[0, 0] = 0.5  # -> 1 everywhere: the mean of the non-zero values is 1
    masks[0, 1] = -0.05
    out = masks_to_logits(masks, torch.tensor([2]))
    # background = clamp(1 - 1 - 0, 0, 1) = 0; logits (0, 1, 0)
    norm = math.log(2.0 + math.e)
    torch.testing.assert_close(out[0, :, 1, 1], torch.tensor([-norm, 1.0 - norm, -norm]))


def test_upsample_is_bilinear_without_aligned_corners() -> None:
    """1x2 -> 1x4 with align_corners=False: a, 0.75 a + 0.25 b, 0.25 a + 0.75 b, b; -inf channels stay -inf."""
    logits = torch.tensor([[[[0.0, 4.0]], [[float("-inf"), float("-inf")]]]])
    up = upsample(logits, (1, 4))
    torch.testing.assert_close(up[0, 0, 0], torch.tensor([0.0, 1.0, 3.0, 4.0]))
    assert torch.isneginf(up[0, 1]).all()
    assert upsample(logits, (1, 2)) is logits


def test_labels_from_scores_first_mask_is_label_zero_and_ties_go_first() -> None:
    """Channel 1 (mask 0) winning gives label 0; a tie goes to the first channel (background -> 255)."""
    scores = torch.tensor([[[[0.1, 0.5, 0.2]], [[0.8, 0.5, 0.2]], [[0.1, 0.0, 0.6]]]])  # (1, 3, 1, 3)
    np.testing.assert_array_equal(labels_from_scores(scores).numpy(), [[[0, 255, 1]]])
