"""Hand-made PiCIE inputs shared by the PiCIE tests: neutral view parameters, coordinate ramps and where a crop of a
ramp must land (independent expectations for the geometry of the views)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from unseg.core.picie.views import ViewParams

GEOMETRY_ONLY = {"jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0}


def hand_params(n: int, box: list[tuple[float, float, float]] | None = None, flip: list[bool] | None = None,
                **view_ops: np.ndarray) -> ViewParams:
    """Neutral photometric parameters (factors 1, no hue, gray, blur) of n images, overridden by `view_ops`
    (jitter (2, n, 4), gray (2, n), blur (2, n)); full boxes and no flips unless given."""
    jitter = np.zeros((2, n, 4))
    jitter[..., :3] = 1.0
    fields = {"jitter": jitter, "gray": np.zeros((2, n), dtype=bool), "blur": np.zeros((2, n)), **view_ops}
    return ViewParams(fields["jitter"], fields["gray"], fields["blur"],
                      np.array(box if box is not None else [(0.0, 0.0, 1.0)] * n, dtype=np.float64),
                      np.array(flip if flip is not None else [False] * n, dtype=bool))


def ramp(n: int, height: int, width: int | None = None) -> torch.Tensor:
    """(n, 3, H, W): channel 0 = x, channel 1 = y of the pixel centre in fractions of the side, channel 2 = the
    image's index / n (tells images apart). Bilinear sampling and box averaging reproduce a linear ramp exactly."""
    width = width or height
    xs = ((torch.arange(width, dtype=torch.float64) + 0.5) / width).view(1, width).expand(height, width)
    ys = ((torch.arange(height, dtype=torch.float64) + 0.5) / height).view(height, 1).expand(height, width)
    out = torch.stack([torch.stack([xs, ys, torch.full_like(xs, i / n)]) for i in range(n)])
    return out.float()


def ramp_crop(box: tuple[float, float, float], flip: bool, out_h: int, out_w: int) -> tuple[torch.Tensor, ...]:
    """What a crop of `ramp` to `box`, flipped or not, resampled to (out_h, out_w) must hold in channels 0 and 1:
    output pixel (i, j) reads the source at x0 + side (j + 1/2) / out_w (mirrored when flipped), y0 + side ..."""
    x0, y0, side = box
    u = (torch.arange(out_w, dtype=torch.float64) + 0.5) / out_w
    v = (torch.arange(out_h, dtype=torch.float64) + 0.5) / out_h
    xs = x0 + side * (1 - u if flip else u)
    ys = y0 + side * v
    return xs.view(1, out_w).expand(out_h, out_w).float(), ys.view(out_h, 1).expand(out_h, out_w).float()


# boxes well inside the image, so that no sample falls beyond the first / last pixel centre
INNER_BOXES = [(0.1, 0.3, 0.5), (0.15, 0.12, 0.7), (0.3, 0.2, 0.6)]
INNER_FLIPS = [False, True, True]


class ArraySource:
    """In-memory stand-in for ImageSource: `batch(rows)` is images[rows]; `batches` yields `batch` of each."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: np.ndarray, device: torch.device) -> torch.Tensor:
        return self.images[torch.as_tensor(np.asarray(indices, dtype=np.int64))].to(device)

    def batches(self, batches: list[np.ndarray], device: torch.device) -> Iterator[torch.Tensor]:
        return (self.batch(rows, device) for rows in batches)


class StubNet(torch.nn.Module):
    """A stand-in for PiCIENet at stride 1: features = the input plus a per-channel bias (a learnable parameter,
    zero at first, so the first features are the input itself). Records (training mode, image ids) of every call,
    the ids read from channel 2 of a `ramp` (index / n)."""

    def __init__(self, n: int, dim: int = 3) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.n, self.dim, self.stride = n, dim, 1
        self.calls: list[tuple[bool, list[int]]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = torch.round(x[:, 2].mean(dim=(1, 2)) * self.n).long().tolist()
        self.calls.append((self.training, ids))
        return x + self.bias
