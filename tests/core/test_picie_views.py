"""PiCIE views: per-image parameters, photometric ops, and the equivariance of the crop/flip on feature maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

from unseg.core.picie.views import (
    ViewConfig,
    crop_flip,
    draw_view_params,
    gaussian_blur,
    photometric,
    shift_hue,
    transform_features,
    view_input,
)

GEOMETRY_ONLY = {"jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0}


def test_view_params_depend_only_on_seed_epoch_and_image() -> None:
    config = ViewConfig(input_size=64)
    all_ = draw_view_params(config, seed=3, epoch=2, indices=np.arange(10))
    some = draw_view_params(config, seed=3, epoch=2, indices=np.array([7, 2]))
    for name in ("box", "flip"):
        np.testing.assert_array_equal(getattr(all_, name)[[7, 2]], getattr(some, name))
    np.testing.assert_array_equal(all_.jitter[:, [7, 2]], some.jitter)
    other_epoch = draw_view_params(config, seed=3, epoch=3, indices=np.arange(10))
    assert not np.allclose(all_.box, other_epoch.box)
    low, high = config.crop_scale
    assert np.all((all_.box[:, 2] >= low) & (all_.box[:, 2] <= high))
    assert np.all(all_.box[:, :2] >= 0) and np.all(all_.box[:, :2] + all_.box[:, 2:] <= 1 + 1e-12)


def test_grayscale_applied_by_default_and_never_with_the_reference_bug() -> None:
    indices = np.arange(400)
    fixed = draw_view_params(ViewConfig(input_size=64), 0, 1, indices)
    assert 0.1 < fixed.gray.mean() < 0.3  # p = 0.2
    bug = draw_view_params(ViewConfig(input_size=64, reference_grayscale_bug=True), 0, 1, indices)
    assert not bug.gray.any()
    np.testing.assert_array_equal(fixed.box, bug.box)  # the option does not shift the other draws


def test_batched_hue_and_blur_match_torchvision() -> None:
    torch.manual_seed(0)
    x = torch.rand(5, 3, 20, 24)
    shifts = torch.tensor([0.0, 0.1, -0.1, 0.5, -0.03])
    expected = torch.stack([TF.adjust_hue(img, float(s)) for img, s in zip(x, shifts, strict=True)])
    torch.testing.assert_close(shift_hue(x, shifts), expected, atol=1e-5, rtol=0)
    sigmas = np.array([0.0, 0.5, 1.0, 0.0, 1.5])
    expected = torch.stack([img if s == 0 else TF.gaussian_blur(img, [2 * int(np.ceil(3 * s)) + 1] * 2, [s, s])
                            for img, s in zip(x, sigmas, strict=True)])
    torch.testing.assert_close(gaussian_blur(x, sigmas), expected, atol=1e-3, rtol=0)


def test_photometric_stays_in_range_and_no_op_params_are_identity() -> None:
    x = torch.rand(6, 3, 16, 16)
    params = draw_view_params(ViewConfig(input_size=32), 0, 1, np.arange(6))
    out = photometric(x, params, 1)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    none = draw_view_params(ViewConfig(input_size=32, **GEOMETRY_ONLY), 0, 1, np.arange(6))
    torch.testing.assert_close(photometric(x, none, 0), x)


def test_crop_flip_full_box_is_identity_and_flip_mirrors() -> None:
    x = torch.rand(2, 3, 8, 8)
    box = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(crop_flip(x, box, np.array([False, False]), 8), x)
    torch.testing.assert_close(crop_flip(x, box, np.array([True, False]), 8)[0], torch.flip(x[0], dims=[-1]))
    # the top-left quarter upsampled by 2: output pixel (1, 1) samples the source at (0.25, 0.25) in pixel units
    half = crop_flip(x, np.array([[0.0, 0.0, 0.5]] * 2), np.array([False, False]), 8)
    expected = (0.5625 * x[..., 0, 0] + 0.1875 * x[..., 0, 1] + 0.1875 * x[..., 1, 0] + 0.0625 * x[..., 1, 1])
    torch.testing.assert_close(half[..., 1, 1], expected)


@pytest.mark.parametrize("net", [nn.Identity(), nn.Conv2d(3, 5, kernel_size=1)], ids=["identity", "conv1x1"])
def test_view2_feature_transform_equals_network_on_view1_geometry(net: nn.Module) -> None:
    """T(f(x)) == f(T(x)) for a network that commutes with resampling: the views' geometry is consistent."""
    torch.manual_seed(0)
    config = ViewConfig(input_size=32, **GEOMETRY_ONLY)
    base = torch.rand(6, 3, 32, 32)
    params = draw_view_params(config, seed=1, epoch=4, indices=np.arange(6))
    params.flip[::2] = True  # both cases, whatever the draw
    params.flip[1::2] = False
    with torch.no_grad():
        view1 = net(view_input(base, params, 0, config))
        view2 = transform_features(net(view_input(base, params, 1, config)), params)
    torch.testing.assert_close(view1, view2, atol=1e-5, rtol=1e-5)


def test_downscaling_crop_is_antialiased_and_agrees_with_the_upscaling_path() -> None:
    """A base larger than the input (paper: 640 -> 320): a fine checkerboard averages to grey, no aliasing; and
    where both paths apply (a batch with one downscaled box), an upscaled image comes out as from grid_sample."""
    checker = ((torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2).float().expand(1, 3, 64, 64)
    out = crop_flip(checker, np.array([[0.0, 0.0, 1.0]]), np.array([False]), 16)
    assert torch.allclose(out, torch.full_like(out, 0.5), atol=0.05)
    x = torch.rand(2, 3, 32, 32)
    boxes, flips = np.array([[0.1, 0.2, 0.5], [0.0, 0.0, 1.0]]), np.array([True, False])
    mixed = crop_flip(x, boxes, flips, 24)  # box 0: 16 px -> 24 (up); box 1: 32 px -> 24 (down): roi_align path
    alone = crop_flip(x[:1], boxes[:1], flips[:1], 24)  # grid_sample path
    torch.testing.assert_close(mixed[:1], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs, match", [
    ({"input_size": 48}, "multiple of 32"),
    ({"crop_scale": (0.0, 1.0)}, "crop_scale"),
    ({"grayscale_p": 1.5}, "grayscale_p"),
    ({"blur_radius": (2.0, 1.0)}, "blur_radius"),
])
def test_bad_view_parameters_raise(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ViewConfig(**{"input_size": 64, **kwargs})
