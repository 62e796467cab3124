"""PiCIE views: per-image parameters, photometric ops, and the equivariance of the crop/flip on feature maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from picie_helpers import GEOMETRY_ONLY, INNER_BOXES, INNER_FLIPS, hand_params, ramp, ramp_crop
from torch import nn

from unseg.core.picie.views import (
    ViewConfig,
    crop_flip,
    draw_view_params,
    gaussian_blur,
    photometric,
    resize,
    shift_hue,
    transform_features,
    view_input,
)


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


@pytest.mark.parametrize("height, width, out", [(32, 32, 32), (32, 48, (40, 56)), (64, 64, 16), (80, 64, (12, 20))],
                         ids=["upscale", "upscale-rect", "downscale", "downscale-rect"])
def test_crop_flip_reads_the_box_of_a_ramp(height: int, width: int, out: int | tuple[int, int]) -> None:
    """crop_flip puts the box's content, mirrored where asked, at the output pixels (both the grid_sample and the
    antialiased roi_align path), x along the width and y along the height."""
    out_h, out_w = (out, out) if isinstance(out, int) else out
    x = ramp(3, height, width)
    got = crop_flip(x, np.array(INNER_BOXES), np.array(INNER_FLIPS), out)
    assert got.shape == (3, 3, out_h, out_w)
    for i, (box, flip) in enumerate(zip(INNER_BOXES, INNER_FLIPS, strict=True)):
        xs, ys = ramp_crop(box, flip, out_h, out_w)
        torch.testing.assert_close(got[i, 0], xs, atol=1e-5, rtol=0)
        torch.testing.assert_close(got[i, 1], ys, atol=1e-5, rtol=0)
        torch.testing.assert_close(got[i, 2], torch.full_like(xs, i / 3), atol=1e-6, rtol=0)  # rows stay apart


def test_transform_features_crops_and_flips_the_feature_map_back_to_its_size() -> None:
    """T on view 2's feature map: each map's own box and flip, resized back to the map's (h, w)."""
    feats = ramp(3, 8)
    params = hand_params(3, INNER_BOXES, INNER_FLIPS)
    got = transform_features(feats, params)
    assert got.shape == feats.shape
    for i, (box, flip) in enumerate(zip(INNER_BOXES, INNER_FLIPS, strict=True)):
        xs, ys = ramp_crop(box, flip, 8, 8)
        torch.testing.assert_close(got[i, :2], torch.stack([xs, ys]), atol=1e-5, rtol=0)


def test_view_inputs_view1_is_cropped_and_flipped_view2_only_resized() -> None:
    """view 1: the box of the base, flipped where asked, at input_size; view 2: the whole base at input_size."""
    config = ViewConfig(input_size=32, **GEOMETRY_ONLY)
    base = ramp(3, 64)
    params = hand_params(3, INNER_BOXES, INNER_FLIPS)
    view1 = view_input(base, params, 0, config)
    view2 = view_input(base, params, 1, config)
    assert view1.shape == view2.shape == (3, 3, 32, 32)
    for i, (box, flip) in enumerate(zip(INNER_BOXES, INNER_FLIPS, strict=True)):
        torch.testing.assert_close(view1[i, :2], torch.stack(ramp_crop(box, flip, 32, 32)), atol=1e-5, rtol=0)
    whole = torch.stack(ramp_crop((0.0, 0.0, 1.0), False, 32, 32))
    # the antialiased resize is exact on a ramp away from the border pixel
    torch.testing.assert_close(view2[:, :2, 1:-1, 1:-1], whole[:, 1:-1, 1:-1].expand(3, 2, 30, 30), atol=1e-5, rtol=0)
    torch.testing.assert_close(view_input(ramp(3, 32), params, 1, config), ramp(3, 32))  # same size: untouched


class PooledConv(nn.Module):
    """An equivariant network at stride 2: a 1x1 conv (affine, pointwise) then 2x2 average pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0.5, -2, 1], [3, 1, -1]]).view(4, 3, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 0.0, 0.1, -0.2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(x), 2)


def test_equivariance_through_view_input_and_transform_features() -> None:
    """f(view 1) == T(f(view 2)) for a network that commutes with resampling (1x1 conv, stride 2), and both equal
    the hand-computed features of the box: the views and T are pixel-aligned, at the feature stride."""
    config = ViewConfig(input_size=32, **GEOMETRY_ONLY)
    base = ramp(3, 64)  # base larger than the input: view 2 is downscaled, view 1 crops with either path
    params = hand_params(3, INNER_BOXES, INNER_FLIPS)
    net = PooledConv()
    with torch.no_grad():
        f1 = net(view_input(base, params, 0, config))
        f2 = transform_features(net(view_input(base, params, 1, config)), params)
    assert f1.shape == f2.shape == (3, 4, 16, 16)
    weight, bias = net.conv.weight.detach().view(4, 3), net.conv.bias.detach()
    for i, (box, flip) in enumerate(zip(INNER_BOXES, INNER_FLIPS, strict=True)):
        xs, ys = ramp_crop(box, flip, 16, 16)
        pixels = torch.stack([xs, ys, torch.full_like(xs, i / 3)])  # the base's channels at each feature pixel
        expected = torch.einsum("oc,chw->ohw", weight, pixels) + bias.view(4, 1, 1)
        torch.testing.assert_close(f1[i], expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(f2[i], expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ photometric, per view
# two views of four images, every op differing between the views (hand-made, not drawn); view 2 shifts every
# image's hue, view 1 not all
JITTER = np.array([[[0.8, 1.2, 0.7, 0.05], [1.3, 0.75, 1.25, 0.0], [1.0, 1.0, 1.0, -0.08], [0.9, 1.1, 1.0, 0.1]],
                   [[1.2, 0.8, 1.3, -0.05], [0.7, 1.3, 0.8, 0.02], [1.1, 0.9, 0.7, 0.07], [1.0, 1.0, 1.0, -0.1]]])
GRAY = np.array([[False, True, False, False], [True, False, False, False]])
BLUR = np.array([[0.0, 0.7, 1.2, 0.0], [0.5, 0.0, 0.0, 1.0]])


def torchvision_photometric(x: torch.Tensor, jitter: np.ndarray, gray: np.ndarray, blur: np.ndarray) -> torch.Tensor:
    """The same op chain image by image with torchvision: brightness, contrast, saturation, hue, grayscale, blur
    (kernel of the batch's widest sigma, as the batched blur)."""
    size = 2 * int(np.ceil(3 * blur.max())) + 1
    out = []
    for img, (b, c, s, h), g, sigma in zip(x, jitter, gray, blur, strict=True):
        img = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(img, b), c), s)
        img = TF.adjust_hue(img, h) if h else img
        img = TF.rgb_to_grayscale(img, num_output_channels=3) if g else img
        out.append(TF.gaussian_blur(img, [size, size], [sigma, sigma]) if sigma else img)
    return torch.stack(out)


@pytest.mark.parametrize("view", [0, 1])
def test_photometric_applies_the_asked_views_own_set(view: int) -> None:
    """photometric(., view) is the torchvision op chain with that view's factors, hue shift, grayscale and blur."""
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(view))
    params = hand_params(4, jitter=JITTER, gray=GRAY, blur=BLUR)
    expected = torchvision_photometric(x, JITTER[view], GRAY[view], BLUR[view])
    out = photometric(x, params, view)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=0)
    other = torchvision_photometric(x, JITTER[1 - view], GRAY[1 - view], BLUR[1 - view])
    assert (photometric(x, params, view) - other).abs().amax(dim=(1, 2, 3)).min() > 0.05  # every image differs


def test_view_inputs_use_set_a_for_view1_and_set_b_for_view2() -> None:
    """view_input(view=0) darkens by view 1's brightness only; view_input(view=1) greys by view 2's grayscale
    only (hand-computed luma), with a full box and no flip."""
    config = ViewConfig(input_size=32, **GEOMETRY_ONLY)
    base = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    jitter = np.zeros((2, 2, 4))
    jitter[..., :3] = 1.0
    jitter[0, :, 0] = 0.5  # view 1: brightness 0.5
    gray = np.array([[False, False], [True, True]])  # view 2: grayscale
    params = hand_params(2, jitter=jitter, gray=gray)
    torch.testing.assert_close(view_input(base, params, 0, config), 0.5 * base)
    luma = 0.2989 * base[:, 0] + 0.587 * base[:, 1] + 0.114 * base[:, 2]
    torch.testing.assert_close(view_input(base, params, 1, config), luma.unsqueeze(1).expand(2, 3, 32, 32))


def test_blur_kernel_is_capped_below_the_image_side() -> None:
    """A sigma too wide for the image: the kernel is the widest odd size below the side (7 on 8 pixels)."""
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    expected = torch.stack([TF.gaussian_blur(x[0], [7, 7], [5.0, 5.0]), x[1]])
    torch.testing.assert_close(gaussian_blur(x, np.array([5.0, 0.0])), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(gaussian_blur(x, np.array([0.0, 0.0])), x)


# -------------------------------------------------------------------------------------------------- random draws
ODD = ViewConfig(input_size=32, crop_scale=(0.3, 0.6), flip_p=0.25, brightness=0.1, contrast=0.2, saturation=0.4,
                 hue=0.05, jitter_p=0.6, grayscale_p=0.3, blur_p=0.7, blur_radius=(0.5, 1.0))


def test_draws_follow_each_configured_distribution() -> None:
    """Every parameter of both views has its own range and probability (distinct values per option, so none can be
    read from another's), and view 2's photometric draws are independent of view 1's."""
    n = 3000
    p = draw_view_params(ODD, seed=5, epoch=1, indices=np.arange(n))
    assert len(p) == n and p.jitter.shape == (2, n, 4) and p.gray.shape == p.blur.shape == (2, n)

    def check(values: np.ndarray, neutral: float, low: float, high: float, prob: float) -> None:
        applied = values != neutral
        assert abs(applied.mean() - prob) < 0.035
        assert low <= values[applied].min() < low + 0.03 * (high - low)
        assert high - 0.03 * (high - low) < values[applied].max() <= high
        assert abs(values[applied].mean() - (low + high) / 2) < 0.03 * (high - low)

    for view in (0, 1):
        for op, x in enumerate((0.1, 0.2, 0.4)):
            check(p.jitter[view, :, op], 1.0, 1 - x, 1 + x, 0.6)
        check(p.jitter[view, :, 3], 0.0, -0.05, 0.05, 0.6)
        check(p.blur[view], 0.0, 0.5, 1.0, 0.7)
        assert abs(p.gray[view].mean() - 0.3) < 0.035
    for op in range(4):  # the views draw independently
        assert abs(np.corrcoef(p.jitter[0, :, op], p.jitter[1, :, op])[0, 1]) < 0.1
    assert abs(np.mean(p.gray[0] & p.gray[1]) - 0.09) < 0.03
    side = p.box[:, 2]
    check(side, 0.0, 0.3, 0.6, 1.0)
    for axis in (0, 1):  # the position is uniform over the places where the box fits
        check(p.box[:, axis] / (1 - side) + 1e-9, 0.0, 0.0, 1.0, 1.0)
    assert abs(np.corrcoef(p.box[:, 0], p.box[:, 1])[0, 1]) < 0.1
    assert abs(p.flip.mean() - 0.25) < 0.035


def test_draws_change_with_seed_and_epoch_and_not_with_what_is_applied() -> None:
    """A seed or an epoch gives new views of every kind; the same (seed, epoch) the same views; probabilities of 0
    or 1 leave the other draws where they were (every number is drawn)."""
    indices = np.arange(50)
    ref = draw_view_params(ODD, seed=5, epoch=2, indices=indices)
    same = draw_view_params(ODD, seed=5, epoch=2, indices=indices)
    for name in ("jitter", "gray", "blur", "box", "flip"):
        np.testing.assert_array_equal(getattr(ref, name), getattr(same, name))
    for other in (draw_view_params(ODD, seed=6, epoch=2, indices=indices),
                  draw_view_params(ODD, seed=5, epoch=3, indices=indices)):
        for name in ("jitter", "blur", "box"):
            assert np.mean(getattr(ref, name) != getattr(other, name)) > 0.5, name
        for name in ("gray", "flip"):
            assert np.any(getattr(ref, name) != getattr(other, name)), name
    always = ViewConfig(**{**ODD.__dict__, "jitter_p": 1.0, "grayscale_p": 1.0, "blur_p": 1.0, "flip_p": 1.0})
    never = ViewConfig(**{**ODD.__dict__, "jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0, "flip_p": 0.0})
    on, off = draw_view_params(always, 5, 2, indices), draw_view_params(never, 5, 2, indices)
    np.testing.assert_array_equal(on.box, ref.box)
    np.testing.assert_array_equal(off.box, ref.box)
    assert on.gray.all() and on.flip.all() and (on.blur > 0).all() and (on.jitter[..., :3] != 1).all()
    assert not off.gray.any() and not off.flip.any() and not off.blur.any() and (off.jitter[..., :3] == 1).all()
    assert not off.jitter[..., 3].any() and on.jitter[..., 3].all()
    applied = ref.jitter != np.array([1.0, 1.0, 1.0, 0.0])  # where ref applied an op, `always` drew the same value
    np.testing.assert_array_equal(on.jitter[applied], ref.jitter[applied])


def test_subset_takes_rows_of_every_array() -> None:
    p = draw_view_params(ODD, seed=0, epoch=1, indices=np.arange(6))
    rows = np.array([4, 1])
    sub = p.subset(rows)
    assert len(sub) == 2
    np.testing.assert_array_equal(sub.jitter, p.jitter[:, rows])
    np.testing.assert_array_equal(sub.gray, p.gray[:, rows])
    np.testing.assert_array_equal(sub.blur, p.blur[:, rows])
    np.testing.assert_array_equal(sub.box, p.box[rows])
    np.testing.assert_array_equal(sub.flip, p.flip[rows])


@pytest.mark.parametrize("kwargs, match", [
    ({"input_size": 0}, r"input_size must be a positive multiple of 32, got 0"),
    ({"input_size": 16}, r"input_size must be a positive multiple of 32, got 16"),
    ({"base_size": 0}, r"base_size must be positive or null, got 0"),
    ({"crop_scale": (0.6, 0.5)}, r"crop_scale must satisfy 0 < low <= high <= 1, got \(0.6, 0.5\)"),
    ({"crop_scale": (0.5, 1.01)}, r"crop_scale"),
    ({"flip_p": -0.1}, r"picie views flip_p must lie in \[0, 1\], got -0.1"),
    ({"jitter_p": 1.1}, r"jitter_p must lie in \[0, 1\], got 1.1"),
    ({"blur_p": 2.0}, r"blur_p must lie in \[0, 1\]"),
    ({"brightness": 1.0}, r"picie views brightness must lie in \[0, 1\), got 1.0"),
    ({"contrast": -0.1}, r"contrast must lie in \[0, 1\)"),
    ({"saturation": 1.0}, r"saturation must lie in \[0, 1\)"),
    ({"hue": 0.51}, r"picie views hue must lie in \[0, 0.5\], got 0.51"),
    ({"hue": -0.1}, r"hue must lie in"),
    ({"blur_radius": (0.0, 1.0)}, r"blur_radius must satisfy 0 < low <= high, got \(0.0, 1.0\)"),
])
def test_more_bad_view_parameters_raise_naming_the_option(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ViewConfig(**{"input_size": 64, **kwargs})


def test_boundary_view_parameters_are_valid_and_ranges_become_float_tuples() -> None:
    """The edges of every allowed range are accepted; list ranges are stored as float tuples."""
    ViewConfig(input_size=32, base_size=1, crop_scale=(1.0, 1.0), flip_p=0.0, jitter_p=1.0, grayscale_p=0.0,
               blur_p=1.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.5, blur_radius=(1.0, 1.0))
    ViewConfig(input_size=32, crop_scale=(0.01, 0.01), flip_p=1.0, jitter_p=0.0, grayscale_p=1.0, blur_p=0.0,
               brightness=0.99, hue=0.0)
    config = ViewConfig(input_size=64, crop_scale=[1, 1], blur_radius=[1, 2])  # type: ignore[arg-type]
    assert config.crop_scale == (1.0, 1.0) and isinstance(config.crop_scale, tuple)
    assert config.blur_radius == (1.0, 2.0) and isinstance(config.blur_radius, tuple)
    assert all(isinstance(v, float) for v in config.crop_scale + config.blur_radius)


def every_fourth_row(height: int, width: int) -> torch.Tensor:
    """(1, 1, H, W): 1 on rows 0, 4, 8, ..., 0 elsewhere: any average over 4 consecutive rows is 1/4, while a point
    sample between two rows reads 0 or 1/2."""
    return (torch.arange(height) % 4 == 0).float().view(1, 1, height, 1).expand(1, 1, height, width).contiguous()


def test_downscale_in_one_dimension_is_antialiased() -> None:
    """A box downscaled in height only (64 rows -> 16) and upscaled in width still averages the rows it covers."""
    out = crop_flip(every_fourth_row(64, 16), np.array([[0.0, 0.0, 1.0]]), np.array([False]), (16, 32))
    torch.testing.assert_close(out, torch.full((1, 1, 16, 32), 0.25), atol=1e-6, rtol=0)
    out = crop_flip(every_fourth_row(64, 16).transpose(2, 3), np.array([[0.0, 0.0, 1.0]]), np.array([False]),
                    (32, 16))
    torch.testing.assert_close(out, torch.full((1, 1, 32, 16), 0.25), atol=1e-6, rtol=0)


def test_resize_down_is_antialiased() -> None:
    """resize averages the rows each output pixel covers (away from the border rows); same size: the input."""
    x = every_fourth_row(64, 64)
    torch.testing.assert_close(resize(x, 16)[..., 1:-1, :], torch.full((1, 1, 14, 16), 0.25), atol=1e-6, rtol=0)
    assert resize(x, 64) is x


@pytest.mark.parametrize("shape", [(66, 20), (20, 66)], ids=["rows", "columns"])
def test_a_slightly_downscaled_box_does_not_depend_on_its_batch(shape: tuple[int, int]) -> None:
    """A box 33 source pixels across sampled to 32 (a downscale by one pixel) comes out the same alone as next to a
    strongly downscaled box: the path choice has no slack of a whole pixel."""
    x = torch.rand(2, 3, *shape, generator=torch.Generator().manual_seed(2))
    boxes, flips = np.array([[0.0, 0.0, 0.5], [0.0, 0.0, 1.0]]), np.array([False, True])
    alone = crop_flip(x[:1], boxes[:1], flips[:1], 32)
    mixed = crop_flip(x, boxes, flips, 32)
    torch.testing.assert_close(mixed[:1], alone, atol=1e-5, rtol=0)


def test_crop_beyond_the_outer_pixel_centres_repeats_the_border_and_keeps_float64() -> None:
    """Upsampling a whole map reads outside the outer pixel centres: the border value is repeated (the corner
    output pixel is the corner input pixel); float64 maps stay float64 and exact."""
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = crop_flip(x, np.array([[0.0, 0.0, 1.0]] * 2), np.array([False, True]), 16)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out[0, :, 0, 0], x[0, :, 0, 0], atol=1e-12, rtol=0)
    torch.testing.assert_close(out[1, :, 0, 0], x[1, :, 0, -1], atol=1e-12, rtol=0)
    ramp64 = ramp(3, 32).double()
    got = crop_flip(ramp64, np.array(INNER_BOXES), np.array(INNER_FLIPS), 24)
    for i, (box, flip) in enumerate(zip(INNER_BOXES, INNER_FLIPS, strict=True)):
        xs, _ = ramp_crop(box, flip, 24, 24)
        torch.testing.assert_close(got[i, 0], xs.double(), atol=1e-6, rtol=0)


def impulse_response(side: int, sigma: float, radius: int) -> np.ndarray:
    """The blur of a unit impulse at the centre of a side x side image, by hand: the normalised 1-D Gaussian of
    `radius` taps each side, run along a reflect-padded impulse (numpy), then the outer product (separable)."""
    taps = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (taps / sigma) ** 2)
    k = k / k.sum()
    impulse = np.zeros(side)
    impulse[side // 2] = 1.0
    profile = np.convolve(np.pad(impulse, radius, mode="reflect"), k, mode="valid")
    return np.outer(profile, profile)


@pytest.mark.parametrize(("side", "sigma", "radius"), [(7, 0.3, 1), (3, 2.0, 1), (9, 2.0, 4)])
def test_blur_of_an_impulse_by_hand(side: int, sigma: float, radius: int) -> None:
    """A small sigma still blurs (3 taps for sigma 0.3: ceil(3 sigma) = 1); a large one is capped to the widest odd
    kernel below the side: 3 taps on 3 px, 9 taps on 9 px."""
    x = torch.zeros(1, 1, side, side, dtype=torch.float64)
    x[0, 0, side // 2, side // 2] = 1.0
    got = gaussian_blur(x, np.array([sigma]))[0, 0].numpy()
    np.testing.assert_allclose(got, impulse_response(side, sigma, radius), atol=1e-12, rtol=0)


def test_blur_leaves_tiny_and_empty_batches_alone() -> None:
    """Images of side 2 or less have no room for a kernel (unchanged); an empty batch stays empty."""
    x = torch.rand(2, 3, 2, 5, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(x, np.array([1.5, 2.0])), x)
    assert gaussian_blur(torch.zeros(0, 3, 8, 8), np.zeros(0)).shape == (0, 3, 8, 8)


def test_contrast_above_one_is_clamped_before_saturation() -> None:
    """Contrast 1.3 pushes the bright pixels above 1: they are clamped (as torchvision does) before the saturation
    step takes its grey from them."""
    img = torch.tensor([[[0.95, 1.0], [0.1, 0.0]], [[0.9, 0.2], [0.05, 0.1]], [[1.0, 0.6], [0.0, 0.3]]],
                       dtype=torch.float64).unsqueeze(0)
    jitter = np.zeros((2, 1, 4))
    jitter[..., :3] = 1.0
    jitter[0, 0, 1:3] = (1.3, 0.5)  # view 1: contrast 1.3, saturation 0.5
    assert (1.3 * img - 0.3 * TF.rgb_to_grayscale(img[0]).mean() > 1).any()  # the case is the one meant
    expected = TF.adjust_saturation(TF.adjust_contrast(img[0], 1.3), 0.5)
    torch.testing.assert_close(photometric(img, hand_params(1, jitter=jitter), 0)[0], expected, atol=1e-6, rtol=0)
