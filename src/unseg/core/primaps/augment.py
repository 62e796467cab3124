"""Photometric augmentation of the student's input in PriMaPs-EM (same geometry as the teacher's clean image).

Per image (PriMaPs [0], docs/methods.md of the shared docs): a Gaussian blur always, sigma ~ U[0.1, 2]; then either
ColorJitter(brightness 0.1, contrast 0.1, saturation 0.1, hue 0.1) with p = 0.3, or grayscale with p = 0.1 (drawn
from one uniform number, so the two never stack). Every random number comes from the given generator.

[0] https://arxiv.org/abs/2404.16818
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms.v2 import functional as TF

BLUR_SIGMA = (0.1, 2.0)
JITTER = 0.1  # brightness, contrast, saturation factors in [1 - 0.1, 1 + 0.1]; hue shift in [-0.1, 0.1]
P_JITTER, P_GRAY = 0.3, 0.1


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def augment_image(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One image (3, H, W) in [0, 1] -> its photometrically augmented copy (3, H, W)."""
    sigma = _uniform(*BLUR_SIGMA, generator)
    radius = min(math.ceil(3 * sigma), (min(image.shape[-2:]) - 1) // 2)
    out = TF.gaussian_blur(image, kernel_size=[2 * radius + 1] * 2, sigma=[sigma, sigma])
    choice = float(torch.rand((), generator=generator))
    if choice < P_JITTER:
        ops = [
            lambda x, f: TF.adjust_brightness(x, f),
            lambda x, f: TF.adjust_contrast(x, f),
            lambda x, f: TF.adjust_saturation(x, f),
        ]
        factors = [_uniform(1 - JITTER, 1 + JITTER, generator) for _ in ops]
        hue = _uniform(-JITTER, JITTER, generator)
        for index in torch.randperm(4, generator=generator).tolist():  # ColorJitter's random order
            out = TF.adjust_hue(out, hue) if index == 3 else ops[index](out, factors[index])
    elif choice < P_JITTER + P_GRAY:
        out = TF.rgb_to_grayscale(out, num_output_channels=3)
    return out.clamp(0.0, 1.0)


def augment_batch(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> augmented copies, one draw per image."""
    return torch.stack([augment_image(image, generator) for image in images])
