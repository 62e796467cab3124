"""Deterministic synthetic segmentation data set (the embedded default data set).

Each scene is a canvas partitioned into 2-5 *stuff* regions (a Voronoi partition
of random seed points, computed on warped coordinates so that the boundaries
wobble) onto which 0..``max_things`` *thing* objects are pasted.

Class identity is carried by **texture and shape statistics only**:

* every stuff class is a texture family with class-specific statistics
  (straight sharp stripes, a lattice of dots, fine random grain, smooth curved
  waves, a rotated checkerboard), each with a random orientation / phase and a
  scale drawn from a class-specific band;
* every thing class has a class-specific silhouette (disc, rotated square,
  rotated equilateral triangle) *and* a class-specific interior texture at a
  finer scale than the stuff textures (concentric rings, a thin cross-hatch
  grid, fine checks), so that it is recognisable locally on a stride-8 feature
  grid and not only from its outline;
* every region and every instance is rendered as a blend of **two random
  colours** (random hue, saturation and brightness, drawn from the same
  distribution for all classes).

Because colour is re-drawn per region, the colour of a pixel says nothing about
its class: k-means on raw RGB pixels performs poorly (pixel purity well below
0.5), while features from an ImageNet CNN -- which respond to oriented edges,
blobs and texture frequency -- separate the classes well. That gap is exactly
what an unsupervised semantic segmentation method should be able to exploit.

Determinism: image ``i`` of split ``s`` is generated from
``np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(code(s), i)))``,
so every image depends only on ``(config.seed, split, i)``: a single image can be
regenerated on its own, and the train and val splits never share a random
stream. The generation functions are pure numpy/scipy and do no file I/O.
Generation is vectorised: about 8-10 ms per 144x176 image on one CPU core.
"""

from __future__ import annotations

import colorsys
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = (
    "stripes",  # stuff: straight sharp stripes, period 6-11 px, any orientation
    "dots",  # stuff: square or hexagonal lattice of dots, period 9-15 px
    "grain",  # stuff: fine random grain, 1-2 px
    "waves",  # stuff: smooth sinusoidal curved waves, period 16-28 px
    "checker",  # stuff: rotated checkerboard, cells of 8-14 px
    "disc",  # thing: disc filled with concentric rings, period 4.5-6.5 px
    "square",  # thing: rotated square filled with a thin cross-hatch grid, period 5-7 px
    "triangle",  # thing: rotated triangle filled with fine checks, cells of 2.5-3.5 px
)
STUFF_CLASSES: tuple[int, ...] = (0, 1, 2, 3, 4)
THING_CLASSES: tuple[int, ...] = (5, 6, 7)

_SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1}
_MIN_SIZE = 32
_MIN_REGIONS = 2
_MAX_REGIONS = 5
_NOISE_SIGMA = 0.02  # Gaussian pixel noise, in [0, 1] intensity units (~5/255)
_THING_SIZE_RANGE = (0.15, 0.35)  # fraction of the short side

_TextureFn = Callable[[np.random.Generator, np.ndarray, np.ndarray], np.ndarray]
_ThingFn = Callable[
    [np.random.Generator, np.ndarray, np.ndarray, float], tuple[np.ndarray, np.ndarray]
]


@dataclass(frozen=True)
class SyntheticConfig:
    """Configuration of the synthetic data set.

    Attributes:
        num_train: Number of training images.
        num_val: Number of validation images.
        height: Image height H in pixels (>= 32).
        width: Image width W in pixels (>= 32). Non-square by default so that
            resize + centre-crop is exercised downstream.
        max_things: Maximum number of thing objects per image (>= 0).
        seed: Non-negative base seed of the data set.
    """

    num_train: int = 600
    num_val: int = 100
    height: int = 144
    width: int = 176
    max_things: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        """Validate the field values.

        Raises:
            ValueError: If a field has an invalid type or value; the message
                names the field and the value.
        """
        for name in ("num_train", "num_val", "height", "width", "max_things", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        for name in ("num_train", "num_val"):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value < _MIN_SIZE:
                raise ValueError(f"{name} must be >= {_MIN_SIZE}, got {value}")
        if self.max_things < 0:
            raise ValueError(f"max_things must be >= 0, got {self.max_things}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    def num_images(self, split: str) -> int:
        """Number of images in ``split``.

        Args:
            split: One of ``"train"``, ``"val"``.

        Returns:
            ``num_train`` or ``num_val``.

        Raises:
            ValueError: If ``split`` is unknown.
        """
        _split_code(split)
        return self.num_train if split == "train" else self.num_val


# ----------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------


def _split_code(split: str) -> int:
    """Return the integer code of ``split``, raising ValueError if unknown."""
    try:
        return _SPLIT_CODES[split]
    except (KeyError, TypeError):
        valid = ", ".join(repr(s) for s in _SPLIT_CODES)
        raise ValueError(f"unknown split {split!r}; valid splits are: {valid}") from None


def _rotate(yy: np.ndarray, xx: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate coordinates by ``theta``.

    Args:
        yy: Row coordinates, any shape.
        xx: Column coordinates, same shape as ``yy``.
        theta: Angle in radians.

    Returns:
        ``(u, v)`` rotated coordinates, same shape as the inputs.
    """
    c, s = float(np.cos(theta)), float(np.sin(theta))
    return xx * c + yy * s, yy * c - xx * s


def _soft_square(phase: np.ndarray, sharpness: float) -> np.ndarray:
    """Soft square wave in [0, 1] (a sharpened sine; anti-aliased edges)."""
    return 0.5 + 0.5 * np.tanh(sharpness * np.sin(phase)) / float(np.tanh(sharpness))


def _random_colour_pair(rng: np.random.Generator) -> np.ndarray:
    """Draw two contrasting random colours, independent of any class.

    Returns:
        Array (2, 3) of RGB values in [0, 1]; the two colours differ in HSV
        value by at least 0.3 so that the texture is visible.
    """
    h0 = rng.random()
    h1 = (h0 + rng.uniform(-0.35, 0.35)) % 1.0
    s0, s1 = rng.uniform(0.1, 0.95, size=2)
    v_lo = rng.uniform(0.05, 0.55)
    v_hi = min(1.0, v_lo + rng.uniform(0.3, 0.6))
    if rng.random() < 0.5:
        v_lo, v_hi = v_hi, v_lo
    return np.array([colorsys.hsv_to_rgb(h0, s0, v_lo), colorsys.hsv_to_rgb(h1, s1, v_hi)])


# ----------------------------------------------------------------------------
# stuff textures: (rng, yy, xx) -> t in [0, 1], same shape as yy
# ----------------------------------------------------------------------------


def _tex_stripes(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Straight, sharp stripes; period 6-11 px, random orientation."""
    u, _ = _rotate(yy, xx, rng.uniform(0.0, np.pi))
    period = rng.uniform(6.0, 11.0)
    phase = 2.0 * np.pi * u / period + rng.uniform(0, 2 * np.pi)
    return _soft_square(phase, rng.uniform(2.5, 5.0))


def _tex_dots(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Lattice (square or hexagonal) of round dots; period 9-15 px."""
    u, v = _rotate(yy, xx, rng.uniform(0.0, np.pi))
    period = rng.uniform(9.0, 15.0)
    radius = period * rng.uniform(0.22, 0.34)
    u = u + rng.uniform(0, period)
    v = v + rng.uniform(0, period)
    if rng.random() < 0.5:  # hexagonal: shift every other row by half a period
        u = u + 0.5 * period * (np.floor(v / period) % 2)
    du = np.mod(u, period) - 0.5 * period
    dv = np.mod(v, period) - 0.5 * period
    return np.clip(radius - np.hypot(du, dv) + 0.5, 0.0, 1.0)


def _tex_grain(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Fine random grain with 1-2 px cells, lightly blurred and contrast-stretched."""
    h, w = yy.shape
    cell = int(rng.integers(1, 3))
    noise = rng.random((-(-h // cell), -(-w // cell)), dtype=np.float32)
    if cell > 1:
        noise = np.repeat(np.repeat(noise, cell, axis=0), cell, axis=1)[:h, :w]
    noise = ndimage.gaussian_filter(noise, sigma=0.6 * cell)
    noise = (noise - float(noise.mean())) / (float(noise.std()) + 1e-8)
    return np.clip(0.5 + 0.3 * noise, 0.0, 1.0)


def _tex_waves(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Smooth (pure sinusoidal) curved waves; period 16-28 px, bent with 3-8 px amplitude."""
    u, v = _rotate(yy, xx, rng.uniform(0.0, np.pi))
    period = rng.uniform(16.0, 28.0)
    bend_len = rng.uniform(30.0, 60.0)
    u = u + rng.uniform(3.0, 8.0) * np.sin(2.0 * np.pi * v / bend_len + rng.uniform(0, 2 * np.pi))
    return 0.5 + 0.5 * np.sin(2.0 * np.pi * u / period + rng.uniform(0, 2 * np.pi))


def _checks(u: np.ndarray, v: np.ndarray, cell: float, sharpness: float) -> np.ndarray:
    """Anti-aliased checkerboard in [0, 1] with square cells of size ``cell``."""
    prod = np.sin(np.pi * u / cell) * np.sin(np.pi * v / cell)
    return 0.5 + 0.5 * np.tanh(sharpness * prod) / float(np.tanh(sharpness))


def _tex_checker(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Rotated checkerboard with cells of 8-14 px."""
    u, v = _rotate(yy, xx, rng.uniform(0.0, 0.5 * np.pi))
    cell = rng.uniform(8.0, 14.0)
    return _checks(u + rng.uniform(0, 2 * cell), v + rng.uniform(0, 2 * cell), cell, 6.0)


_STUFF_TEXTURES: dict[int, _TextureFn] = {
    0: _tex_stripes,
    1: _tex_dots,
    2: _tex_grain,
    3: _tex_waves,
    4: _tex_checker,
}


# ----------------------------------------------------------------------------
# things: (rng, dy, dx, size) -> (mask, t); dy, dx relative to the object centre
# ----------------------------------------------------------------------------


def _thing_disc(
    rng: np.random.Generator, dy: np.ndarray, dx: np.ndarray, size: float
) -> tuple[np.ndarray, np.ndarray]:
    """Disc of diameter ``size`` filled with concentric rings (period 4.5-6.5 px)."""
    d = np.hypot(dy, dx)
    mask = d <= 0.5 * size
    t = 0.5 + 0.5 * np.cos(2.0 * np.pi * d / rng.uniform(4.5, 6.5) + rng.uniform(0, 2 * np.pi))
    return mask, t


def _thing_square(
    rng: np.random.Generator, dy: np.ndarray, dx: np.ndarray, size: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rotated square of side ``0.9 * size`` filled with a thin cross-hatch grid (5-7 px)."""
    u, v = _rotate(dy, dx, rng.uniform(0.0, 0.5 * np.pi))
    half = 0.45 * size
    mask = (np.abs(u) <= half) & (np.abs(v) <= half)
    period = rng.uniform(5.0, 7.0)
    line_w = 1.1
    offset = rng.uniform(0, period)
    du = np.abs(np.mod(u + offset, period) - 0.5 * period)
    dv = np.abs(np.mod(v + offset, period) - 0.5 * period)
    t = np.clip(np.maximum(du, dv) - (0.5 * period - line_w) + 0.5, 0.0, 1.0)
    return mask, t


def _thing_triangle(
    rng: np.random.Generator, dy: np.ndarray, dx: np.ndarray, size: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rotated equilateral triangle (circumradius ``0.75 * size``) with fine checks (2.5-3.5 px)."""
    theta = rng.uniform(0.0, 2.0 * np.pi)
    inradius = 0.5 * 0.75 * size
    mask = np.ones(dy.shape, dtype=bool)
    for k in range(3):
        a = theta + 2.0 * np.pi * k / 3.0
        mask &= dx * float(np.cos(a)) + dy * float(np.sin(a)) <= inradius
    u, v = _rotate(dy, dx, theta)
    t = _checks(u, v, rng.uniform(2.5, 3.5), 3.0)
    return mask, t


_THING_SHAPES: dict[int, _ThingFn] = {
    5: _thing_disc,
    6: _thing_square,
    7: _thing_triangle,
}


# ----------------------------------------------------------------------------
# scene generation
# ----------------------------------------------------------------------------


def _stuff_partition(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, n_regions: int
) -> np.ndarray:
    """Voronoi partition with wobbly boundaries.

    Args:
        rng: Random generator.
        yy: Row coordinates (H, W).
        xx: Column coordinates (H, W).
        n_regions: Number of seed points.

    Returns:
        Region index map (H, W), int, values in [0, n_regions).
    """
    h, w = yy.shape
    short = min(h, w)
    # seeds: best of a few candidates, keeping them apart so regions are not tiny
    seeds = np.empty((n_regions, 2))
    min_dist = 0.3 * short
    for k in range(n_regions):
        cand = rng.uniform((0.0, 0.0), (h, w), size=(8, 2))
        if k > 0:
            dist = np.min(np.linalg.norm(cand[:, None, :] - seeds[None, :k, :], axis=-1), axis=1)
            ok = np.flatnonzero(dist >= min_dist)
            idx = ok[0] if ok.size else int(np.argmax(dist))
        else:
            idx = 0
        seeds[k] = cand[idx]
    # low-frequency warp of the coordinates -> wobbly boundaries
    amp = rng.uniform(0.02 * short, 0.08 * short, size=4).tolist()
    length = rng.uniform(0.3 * short, 0.9 * short, size=4).tolist()
    phase = rng.uniform(0.0, 2.0 * np.pi, size=4).tolist()
    wy = yy + amp[0] * np.sin(2 * np.pi * xx / length[0] + phase[0]) + amp[1] * np.sin(
        2 * np.pi * (xx + yy) / length[1] + phase[1]
    )
    wx = xx + amp[2] * np.sin(2 * np.pi * yy / length[2] + phase[2]) + amp[3] * np.sin(
        2 * np.pi * (xx - yy) / length[3] + phase[3]
    )
    best = np.full(yy.shape, np.inf, dtype=yy.dtype)
    regions = np.zeros(yy.shape, dtype=np.intp)
    for k, (sy, sx) in enumerate(seeds.tolist()):
        d2 = (wy - sy) ** 2 + (wx - sx) ** 2
        closer = d2 < best
        best = np.where(closer, d2, best)
        regions[closer] = k
    return regions


def generate_scene(
    rng: np.random.Generator, height: int, width: int, max_things: int
) -> tuple[np.ndarray, np.ndarray]:
    """Generate one synthetic scene.

    Args:
        rng: Random generator; the scene is a deterministic function of its state.
        height: Image height H (>= 32).
        width: Image width W (>= 32).
        max_things: Maximum number of thing objects (>= 0); the actual number is
            uniform in ``[0, max_things]``.

    Returns:
        ``(image, label)``: image uint8 (H, W, 3) RGB, label uint8 (H, W) with
        class ids in ``[0, len(CLASS_NAMES))``.

    Raises:
        ValueError: If a size is too small or ``max_things`` is negative.
    """
    if height < _MIN_SIZE or width < _MIN_SIZE:
        raise ValueError(f"height and width must be >= {_MIN_SIZE}, got {height}x{width}")
    if max_things < 0:
        raise ValueError(f"max_things must be >= 0, got {max_things}")
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    # --- stuff: one texture map t in [0, 1] and two colour maps, mixed at the end ---
    n_regions = int(rng.integers(_MIN_REGIONS, _MAX_REGIONS + 1))
    regions = _stuff_partition(rng, yy, xx, n_regions)
    classes = rng.choice(np.asarray(STUFF_CLASSES, dtype=np.uint8), size=n_regions, replace=False)
    t = np.empty((height, width), dtype=np.float32)
    colours = np.empty((n_regions, 2, 3), dtype=np.float32)
    for k, cls in enumerate(classes):
        mask = regions == k
        tex = _STUFF_TEXTURES[int(cls)](rng, yy, xx)
        np.copyto(t, tex, where=mask, casting="unsafe")
        colours[k] = _random_colour_pair(rng)
    label = classes[regions]
    c0 = np.take(colours[:, 0], regions, axis=0)
    image = c0 + (np.take(colours[:, 1], regions, axis=0) - c0) * t[..., None]

    # --- things: pasted on top, in order, each in its own bounding box ---
    short = min(height, width)
    n_things = int(rng.integers(0, max_things + 1))
    for _ in range(n_things):
        cls = int(rng.choice(np.asarray(THING_CLASSES)))
        size = rng.uniform(*_THING_SIZE_RANGE) * short
        cy = rng.uniform(0.5 * size, height - 0.5 * size)
        cx = rng.uniform(0.5 * size, width - 0.5 * size)
        ext = int(np.ceil(0.8 * size)) + 1
        y0, y1 = max(0, int(cy) - ext), min(height, int(cy) + ext + 1)
        x0, x1 = max(0, int(cx) - ext), min(width, int(cx) + ext + 1)
        dy = yy[y0:y1, x0:x1] - np.float32(cy)
        dx = xx[y0:y1, x0:x1] - np.float32(cx)
        mask, tt = _THING_SHAPES[cls](rng, dy, dx, size)
        pair = _random_colour_pair(rng).astype(np.float32)
        tm = tt[mask][:, None]
        image[y0:y1, x0:x1][mask] = pair[0] * (1.0 - tm) + pair[1] * tm
        label[y0:y1, x0:x1][mask] = cls

    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(_NOISE_SIGMA)
    image *= 255.0
    np.rint(image, out=image)
    np.clip(image, 0, 255, out=image)
    return image.astype(np.uint8), label


def _image_rng(config: SyntheticConfig, split: str, index: int) -> np.random.Generator:
    """Random generator of image ``index`` of ``split``; depends only on (seed, split, index)."""
    seq = np.random.SeedSequence(config.seed, spawn_key=(_split_code(split), index))
    return np.random.default_rng(seq)


def make_image(config: SyntheticConfig, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Regenerate a single image of a split.

    Args:
        config: Data set configuration.
        split: ``"train"`` or ``"val"``.
        index: Image index in ``[0, config.num_<split>)``.

    Returns:
        ``(image, label)``: image uint8 (H, W, 3), label uint8 (H, W), identical
        to the ``index``-th element yielded by :func:`iter_split`.

    Raises:
        ValueError: If ``split`` is unknown.
        IndexError: If ``index`` is out of range for the split.
    """
    n = config.num_images(split)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise IndexError(f"index must be an integer, got {index!r}")
    if not 0 <= index < n:
        raise IndexError(f"index {index} out of range for split {split!r} with {n} images")
    rng = _image_rng(config, split, int(index))
    return generate_scene(rng, config.height, config.width, config.max_things)


def iter_split(
    config: SyntheticConfig, split: str
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Iterate over all images of a split.

    Args:
        config: Data set configuration.
        split: ``"train"`` or ``"val"``.

    Returns:
        Iterator of ``(image_id, image, label)`` with ids like ``"train_000000"``,
        image uint8 (H, W, 3) and label uint8 (H, W).

    Raises:
        ValueError: If ``split`` is unknown (raised immediately, not lazily).
    """
    n = config.num_images(split)
    logger.debug("generating %d synthetic %s images (seed=%d)", n, split, config.seed)
    return _iter_split(config, split, n)


def _iter_split(
    config: SyntheticConfig, split: str, n: int
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Lazy body of :func:`iter_split`."""
    for i in range(n):
        image, label = make_image(config, split, i)
        yield f"{split}_{i:06d}", image, label
