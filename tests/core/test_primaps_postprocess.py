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
