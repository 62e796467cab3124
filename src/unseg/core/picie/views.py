"""PiCIE's two views: per-image, per-epoch random photometric and geometric parameters, and how they are applied.

[0] https://arxiv.org/abs/2103.17070, Sec. 3.3;  [1] https://github.com/janghyuncho/PiCIE (data/, commit 07cc8ffb)

Per image and epoch (drawn once, so the clustering, label and training passes of an epoch see the same views):
- view 1: photometric set A on the base image, then a random square crop (side fraction U(crop_scale), random
  position), resized to `input_size`, flipped horizontally with p = flip_p; then the network;
- view 2: photometric set B on the base image, resized to `input_size`, the network, then the SAME crop and flip
  applied to the feature map, resized back to its size (`transform_features`).
So f(view 1) and T(f(view 2)) are pixel-aligned: comparing them asks for equivariance to T, and A vs B asks for
photometric invariance.

Photometric (each set drawn independently, applied in this fixed order as in [1]): brightness, contrast, saturation
factors U[1 - x, 1 + x] each with p = jitter_p; hue shift U[-hue, hue] with p = jitter_p; grayscale with
p = grayscale_p; Gaussian blur with p = blur_p, sigma U(blur_radius). The reference never applies grayscale (a
misspelt option); `reference_grayscale_bug: true` reproduces that.

Random numbers come from a generator seeded by (seed, epoch, image index): an image's views do not depend on the batch
it lands in, on the data-set size or on how many epochs ran before, which makes resuming exact.

Geometry uses continuous coordinates: a crop box is (x0, y0, side) in fractions of the base side, and crops are
bilinear samples at output pixel centres (`grid_sample`, align_corners=False). Cropping the image and cropping a
feature map of a network that commutes with resampling (e.g. 1x1 convs) give the same result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision / PIL


@dataclass(frozen=True)
class ViewConfig:
    """Parameters of the two views (see the module docstring).

    Attributes:
        input_size: side of the network input (paper 320).
        base_size: side of the base image the views are cut from (paper 640); None = the prepared crop as is.
        crop_scale: range of the crop's side as a fraction of the base side.
        flip_p: probability of a horizontal flip.
        brightness / contrast / saturation: factor range 1 -/+ x; hue: shift range -/+ hue (in turns).
        jitter_p: probability of each of the four colour ops.
        grayscale_p: probability of grayscale.
        reference_grayscale_bug: True never applies grayscale (the reference's behaviour).
        blur_p: probability of a Gaussian blur; blur_radius: its sigma range in base-image pixels.
    """

    input_size: int = 320
    base_size: int | None = None
    crop_scale: tuple[float, float] = (0.5, 1.0)
    flip_p: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.1
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    reference_grayscale_bug: bool = False
    blur_p: float = 0.5
    blur_radius: tuple[float, float] = (0.1, 2.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop_scale", tuple(float(v) for v in self.crop_scale))
        object.__setattr__(self, "blur_radius", tuple(float(v) for v in self.blur_radius))
        if self.input_size < 32 or self.input_size % 32:
            raise ValueError(f"picie views input_size must be a positive multiple of 32, got {self.input_size}")
        if self.base_size is not None and self.base_size < 1:
            raise ValueError(f"picie views base_size must be positive or null, got {self.base_size}")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"picie views crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"picie views {name} must lie in [0, 1], got {getattr(self, name)}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"picie views {name} must lie in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"picie views hue must lie in [0, 0.5], got {self.hue}")
        if not 0 < self.blur_radius[0] <= self.blur_radius[1]:
            raise ValueError(f"picie views blur_radius must satisfy 0 < low <= high, got {self.blur_radius}")


@dataclass
class ViewParams:
    """Random parameters of both views for n images (arrays, index i = i-th image asked for).

    Attributes:
        jitter: (2, n, 4) per view: brightness, contrast, saturation factors (1 = not applied) and hue shift (0 = not).
        gray: (2, n) bool.
        blur: (2, n) sigma, 0 = not applied.
        box: (n, 3) crop x0, y0, side, fractions of the base side.
        flip: (n,) bool.
    """

    jitter: np.ndarray
    gray: np.ndarray
    blur: np.ndarray
    box: np.ndarray
    flip: np.ndarray

    def __len__(self) -> int:
        return len(self.flip)

    def subset(self, rows: np.ndarray) -> ViewParams:
        return ViewParams(self.jitter[:, rows], self.gray[:, rows], self.blur[:, rows], self.box[rows], self.flip[rows])


def draw_view_params(config: ViewConfig, seed: int, epoch: int, indices: np.ndarray) -> ViewParams:
    """Parameters of both views of the images `indices` in `epoch`, each from its own (seed, epoch, index) stream.

    Every number is drawn whether or not its op is applied, so the streams never shift.
    """
    n = len(indices)
    jitter = np.zeros((2, n, 4))
    gray = np.zeros((2, n), dtype=bool)
    blur = np.zeros((2, n))
    box = np.zeros((n, 3))
    flip = np.zeros(n, dtype=bool)
    ranges = (config.brightness, config.contrast, config.saturation)
    for row, index in enumerate(indices):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(index)]))
        for view in range(2):
            for op, x in enumerate(ranges):
                apply, factor = rng.random() < config.jitter_p, rng.uniform(1 - x, 1 + x)
                jitter[view, row, op] = factor if apply else 1.0
            apply, shift = rng.random() < config.jitter_p, rng.uniform(-config.hue, config.hue)
            jitter[view, row, 3] = shift if apply else 0.0
            gray[view, row] = (rng.random() < config.grayscale_p) and not config.reference_grayscale_bug
            apply, sigma = rng.random() < config.blur_p, rng.uniform(*config.blur_radius)
            blur[view, row] = sigma if apply else 0.0
        side = rng.uniform(*config.crop_scale)
        box[row] = (rng.uniform(0, 1 - side), rng.uniform(0, 1 - side), side)
        flip[row] = rng.random() < config.flip_p
    return ViewParams(jitter, gray, blur, box, flip)


# ------------------------------------------------------------------------------------------------- photometric
def _gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> luma (B, 1, H, W)."""
    weights = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def _gaussian_kernels(sigmas: np.ndarray, limit: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """1-D Gaussian kernels (B, k), one per sigma, all of the size of the widest (2 * ceil(3 sigma) + 1, capped to
    an odd size below `limit`); sigma 0 gives the identity kernel."""
    radius = int(math.ceil(3 * float(sigmas.max()))) if len(sigmas) else 0
    radius = max(0, min(radius, (limit - 1) // 2))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    sig = torch.as_tensor(sigmas, dtype=torch.float64).clamp_min(1e-6).unsqueeze(1)
    kernels = torch.exp(-0.5 * (taps / sig) ** 2)
    kernels = torch.where(torch.as_tensor(sigmas > 0).unsqueeze(1), kernels, (taps == 0).double().expand_as(kernels))
    return (kernels / kernels.sum(1, keepdim=True)).to(dtype=dtype, device=device)


def gaussian_blur(x: torch.Tensor, sigmas: np.ndarray) -> torch.Tensor:
    """Separable Gaussian blur with a sigma per image (0 = none), reflect padding, the whole batch at once.

    Args:
        x: (B, C, H, W); sigmas: (B,).
    """
    batch, channels, height, width = x.shape
    kernels = _gaussian_kernels(np.asarray(sigmas, dtype=np.float64), min(height, width), x.dtype, x.device)
    radius = (kernels.shape[1] - 1) // 2
    if radius == 0:
        return x
    weight = kernels.repeat_interleave(channels, dim=0)  # (B * C, k): one kernel per image and channel
    flat = x.reshape(1, batch * channels, height, width)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), weight.view(-1, 1, 1, 2 * radius + 1),
                    groups=batch * channels)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), weight.view(-1, 1, 2 * radius + 1, 1),
                    groups=batch * channels)
    return flat.view(batch, channels, height, width)


def shift_hue(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Rotates the HSV hue of each image by its shift (in turns), the whole batch at once.

    Args:
        x: (B, 3, H, W) RGB in [0, 1]; shifts: (B,) in [-0.5, 0.5].
    """
    r, g, b = x.unbind(1)
    value, _ = x.max(1)
    low, _ = x.min(1)
    chroma = value - low
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    # hue in sextants [0, 6): which channel is the maximum decides the formula
    hue = torch.where(value == r, ((g - b) / safe) % 6,
                      torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(chroma > 0, hue, torch.zeros_like(hue))
    hue = (hue / 6 + shifts.view(-1, 1, 1)) % 1.0
    # back to RGB: channel n gets value - chroma * clamp(min(k, 4 - k), 0, 1), k = (n + 6 hue) mod 6, n = 5, 3, 1
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = (n + hue.unsqueeze(1) * 6) % 6
    return value.unsqueeze(1) - chroma.unsqueeze(1) * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def photometric(images: torch.Tensor, params: ViewParams, view: int) -> torch.Tensor:
    """Applies one view's photometric set to a batch.

    Args:
        images: (B, 3, H, W) float RGB in [0, 1].
        params: parameters of the same B images.
        view: 0 (set A, view 1) or 1 (set B, view 2).

    Returns:
        (B, 3, H, W) in [0, 1].
    """
    jitter = torch.as_tensor(params.jitter[view], dtype=images.dtype, device=images.device)  # (B, 4)

    def per_image(column: int) -> torch.Tensor:
        return jitter[:, column].view(-1, 1, 1, 1)

    x = (images * per_image(0)).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (per_image(1) * x + (1 - per_image(1)) * mean).clamp(0, 1)
    x = (per_image(2) * x + (1 - per_image(2)) * _gray(x)).clamp(0, 1)
    if np.any(params.jitter[view, :, 3] != 0):
        x = shift_hue(x, jitter[:, 3])
    gray = torch.as_tensor(params.gray[view], device=images.device).view(-1, 1, 1, 1)
    x = torch.where(gray, _gray(x).expand_as(x), x)
    if np.any(params.blur[view] > 0):
        x = gaussian_blur(x, params.blur[view])
    return x


# ----------------------------------------------------------------------------------------------------- geometry
def crop_flip(x: torch.Tensor, box: np.ndarray, flip: np.ndarray, size: int | tuple[int, int]) -> torch.Tensor:
    """Crops each map to its box, flips it horizontally where asked, and resamples it to `size`.

    Upscaling (always the case on feature maps, and on images when the base is the input size) is a bilinear sample at
    the output pixel centres (`grid_sample`). When some box is larger than the output in source pixels (a downscale,
    e.g. the paper's 640 base to a 320 input), the batch goes through `roi_align` with adaptive sampling instead,
    which averages several bilinear samples per output pixel (antialiasing); for an upscale it gives the same result.

    Args:
        x: (B, C, H, W) images or feature maps.
        box: (B, 3) x0, y0, side in fractions of the map's side.
        flip: (B,) bool.
        size: output side, or (h, w).

    Returns:
        (B, C, *size).
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    height, width = x.shape[-2:]
    box_t = torch.as_tensor(box, dtype=x.dtype, device=x.device)
    flips = torch.as_tensor(flip, device=x.device)
    sides = np.asarray(box, dtype=np.float64)[:, 2]
    if np.any(sides * height > out_h + 1e-6) or np.any(sides * width > out_w + 1e-6):
        rois = torch.stack([torch.arange(len(x), dtype=x.dtype, device=x.device),
                            box_t[:, 0] * width, box_t[:, 1] * height,
                            (box_t[:, 0] + box_t[:, 2]) * width, (box_t[:, 1] + box_t[:, 2]) * height], dim=1)
        out = roi_align(x, rois, (out_h, out_w), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        return torch.where(flips.view(-1, 1, 1, 1), out.flip(-1), out)
    sign = 1 - 2 * flips.to(x.dtype)
    theta = torch.zeros(len(x), 2, 3, dtype=x.dtype, device=x.device)
    # output pixel centre u in (-1, 1) reads source coordinate side * (+/-u) + (2 * x0 + side - 1)
    theta[:, 0, 0] = box_t[:, 2] * sign
    theta[:, 0, 2] = 2 * box_t[:, 0] + box_t[:, 2] - 1
    theta[:, 1, 1] = box_t[:, 2]
    theta[:, 1, 2] = 2 * box_t[:, 1] + box_t[:, 2] - 1
    grid = F.affine_grid(theta, [len(x), x.shape[1], out_h, out_w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size), bilinear with antialiasing; the input itself when already that size."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def view_input(base: torch.Tensor, params: ViewParams, view: int, config: ViewConfig) -> torch.Tensor:
    """The network input of view 1 (view=0: photometric A, crop, flip, resize) or view 2 (view=1: photometric B,
    resize), (B, 3, input_size, input_size), from base images (B, 3, S, S) in [0, 1]."""
    x = photometric(base, params, view)
    if view == 0:
        return crop_flip(x, params.box, params.flip, config.input_size)
    return resize(x, config.input_size)


def transform_features(features: torch.Tensor, params: ViewParams) -> torch.Tensor:
    """T applied to view 2's feature map: the view-1 crop and flip, resized back to the map's size. (B, D, h, w)."""
    return crop_flip(features, params.box, params.flip, tuple(features.shape[-2:]))
