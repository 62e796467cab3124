"""From soft PriMaPs to per-pixel label logits: median filter, x10 clamp, background channel, log-softmax.

Per image, on the feature grid (PriMaPs [0], docs/methods.md of the shared docs):

1. 3x3 median filter of every mask, reflect padding;
2. masks = clamp(10 * masks, 0, 1);
3. background = clamp(mean of the non-zero mask values - sum of the masks, 0, 1), one channel;
4. log-softmax over [background, mask 0, mask 1, ...].

The logits are then upsampled bilinearly to the image resolution and either refined by a DenseCRF (`crf.py`) or
turned into labels directly: argmax, background -> ignore (255), mask j -> j.

[0] https://arxiv.org/abs/2404.16818
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = 255
SCALE = 10.0  # the reference's "multiply by 10 and clamp"


def median3x3(masks: torch.Tensor) -> torch.Tensor:
    """3x3 median filter with reflect padding over the last two dimensions.

    Args:
        masks: (..., h, w) with h, w >= 2 (reflect padding needs two cells per side).

    Returns:
        (..., h, w) filtered.
    """
    *lead, height, width = masks.shape
    flat = masks.reshape(-1, 1, height, width)
    padded = F.pad(flat, (1, 1, 1, 1), mode="reflect")
    windows = F.unfold(padded, kernel_size=3)  # (n, 9, h * w)
    return windows.median(dim=1).values.reshape(*lead, height, width)


def masks_to_logits(masks: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of [background, masks] per cell.

    Args:
        masks: (B, M, h, w) soft masks in [0, 1]; only the first counts[b] are real for image b.
        counts: (B,) real masks per image.

    Returns:
        (B, M + 1, h, w) log-softmax over channels; channel 0 is the background, channel j + 1 is mask j. Channels of
        padding masks (j >= counts[b]) are -inf. An image without masks is background everywhere (log-prob 0).
    """
    batch, slots = masks.shape[:2]
    real = torch.arange(slots, device=masks.device).unsqueeze(0) < counts.unsqueeze(1)  # (B, M)
    real = real[:, :, None, None]
    m = torch.where(real, (SCALE * median3x3(masks)).clamp(0.0, 1.0), torch.zeros_like(masks))
    nonzero = m > 0
    mean = (m * nonzero).sum((1, 2, 3)) / nonzero.sum((1, 2, 3)).clamp_min(1)  # (B,)
    background = (mean[:, None, None, None] - m.sum(1, keepdim=True)).clamp(0.0, 1.0)
    background = torch.where(counts[:, None, None, None] > 0, background, torch.ones_like(background))
    logits = torch.cat([background, torch.where(real, m, torch.full_like(m, float("-inf")))], dim=1)
    return logits.log_softmax(dim=1)


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of (B, L, h, w) logits to (B, L, *size); -inf channels stay -inf."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    dead = torch.isinf(logits).all(dim=(2, 3), keepdim=True)
    finite = torch.where(torch.isinf(logits), torch.zeros_like(logits), logits)
    up = F.interpolate(finite, size=size, mode="bilinear", align_corners=False)
    return torch.where(dead, torch.full_like(up, float("-inf")), up)


def labels_from_scores(scores: torch.Tensor) -> torch.Tensor:
    """Label maps from [background, masks] scores: argmax, background -> 255, mask j -> j.

    Args:
        scores: (B, L, H, W) logits or probabilities, channel 0 the background.

    Returns:
        uint8 (B, H, W).
    """
    best = scores.max(dim=1).indices  # max, not argmax: much faster on CPU; the first maximum wins
    return torch.where(best == 0, torch.full_like(best, IGNORE), best - 1).to(torch.uint8)
