"""Tests of the deterministic synthetic segmentation data set."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage
from scipy.cluster.vq import kmeans2, vq

from unseg.core.data.synthetic import (
    CLASS_NAMES,
    STUFF_CLASSES,
    THING_CLASSES,
    SyntheticConfig,
    generate_scene,
    iter_split,
    make_image,
)

NUM_CLASSES = len(CLASS_NAMES)
Images = list[tuple[np.ndarray, np.ndarray]]


@pytest.fixture(scope="module")
def default_images() -> Images:
    """The first 40 training images of the default configuration."""
    config = SyntheticConfig()
    return [make_image(config, "train", i) for i in range(40)]


def _instances(
    images: Images, min_pixels: int = 150
) -> list[tuple[int, np.ndarray]]:
    """(class id, pixels (N, 3) float) of every connected class component of >= min_pixels."""
    out = []
    for image, label in images:
        for cls in np.unique(label):
            components, n = ndimage.label(label == cls)
            for j in range(1, n + 1):
                mask = components == j
                if mask.sum() >= min_pixels:
                    out.append((int(cls), image[mask].astype(np.float64)))
    return out


# ----------------------------------------------------------------------------
# constants
# ----------------------------------------------------------------------------


def test_class_constants() -> None:
    assert NUM_CLASSES == 8
    assert len(set(CLASS_NAMES)) == NUM_CLASSES
    assert all(isinstance(name, str) and name for name in CLASS_NAMES)
    assert len(STUFF_CLASSES) == 5
    assert len(THING_CLASSES) == 3
    assert sorted(STUFF_CLASSES + THING_CLASSES) == list(range(NUM_CLASSES))
    assert max(STUFF_CLASSES) < min(THING_CLASSES)  # stuff first, then things


def test_default_config() -> None:
    config = SyntheticConfig()
    assert (config.num_train, config.num_val) == (600, 100)
    assert (config.height, config.width) == (144, 176)
    assert config.max_things == 4
    assert config.seed == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1  # type: ignore[misc]


# ----------------------------------------------------------------------------
# shapes, dtypes, ranges
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "max_things"),
    [(144, 176, 4), (32, 32, 2), (64, 40, 0), (96, 200, 8)],
)
def test_make_image_shapes_and_ranges(height: int, width: int, max_things: int) -> None:
    config = SyntheticConfig(
        num_train=3, num_val=2, height=height, width=width, max_things=max_things
    )
    for split in ("train", "val"):
        for i in range(2):
            image, label = make_image(config, split, i)
            assert image.shape == (height, width, 3)
            assert image.dtype == np.uint8
            assert label.shape == (height, width)
            assert label.dtype == np.uint8
            assert label.max() < NUM_CLASSES
            assert image.std() > 10.0  # not a blank canvas


def test_generate_scene_direct() -> None:
    image_a, label_a = generate_scene(np.random.default_rng(123), 50, 70, 3)
    image_b, label_b = generate_scene(np.random.default_rng(123), 50, 70, 3)
    assert image_a.shape == (50, 70, 3) and image_a.dtype == np.uint8
    assert label_a.shape == (50, 70) and label_a.dtype == np.uint8
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(label_a, label_b)


@pytest.mark.parametrize(("height", "width", "max_things"), [(31, 64, 2), (64, 8, 2), (64, 64, -1)])
def test_generate_scene_rejects_bad_arguments(height: int, width: int, max_things: int) -> None:
    with pytest.raises(ValueError):
        generate_scene(np.random.default_rng(0), height, width, max_things)


def test_no_things_when_max_things_is_zero() -> None:
    config = SyntheticConfig(num_train=20, num_val=1, height=48, width=64, max_things=0)
    for _, _, label in iter_split(config, "train"):
        assert set(np.unique(label).tolist()) <= set(STUFF_CLASSES)


def test_stuff_regions_count(default_images: Images) -> None:
    for _, label in default_images:
        stuff_present = set(np.unique(label).tolist()) & set(STUFF_CLASSES)
        # 2-5 regions with distinct classes; things may hide at most a small region
        assert 1 <= len(stuff_present) <= 5
    counts = [len(set(np.unique(lb).tolist()) & set(STUFF_CLASSES)) for _, lb in default_images]
    assert np.mean(counts) >= 2.5


# ----------------------------------------------------------------------------
# determinism
# ----------------------------------------------------------------------------


def test_same_config_is_identical() -> None:
    config = SyntheticConfig(num_train=4, num_val=3, height=48, width=56)
    for split in ("train", "val"):
        first = list(iter_split(config, split))
        again = SyntheticConfig(num_train=4, num_val=3, height=48, width=56)
        second = list(iter_split(again, split))
        assert [i for i, _, _ in first] == [i for i, _, _ in second]
        for (_, im_a, lb_a), (_, im_b, lb_b) in zip(first, second, strict=True):
            np.testing.assert_array_equal(im_a, im_b)
            np.testing.assert_array_equal(lb_a, lb_b)


def test_different_seed_differs() -> None:
    a = SyntheticConfig(num_train=3, num_val=1, seed=0)
    b = SyntheticConfig(num_train=3, num_val=1, seed=1)
    for i in range(3):
        assert not np.array_equal(make_image(a, "train", i)[0], make_image(b, "train", i)[0])


@pytest.mark.parametrize("split", ["train", "val"])
def test_make_image_matches_iter_split(split: str) -> None:
    config = SyntheticConfig(num_train=6, num_val=5, height=40, width=48, seed=7)
    items = list(iter_split(config, split))
    n = config.num_train if split == "train" else config.num_val
    assert len(items) == n
    assert [image_id for image_id, _, _ in items] == [f"{split}_{i:06d}" for i in range(n)]
    for i in (0, n - 1, n // 2):
        image, label = make_image(config, split, i)
        np.testing.assert_array_equal(items[i][1], image)
        np.testing.assert_array_equal(items[i][2], label)


def test_image_depends_only_on_seed_split_index() -> None:
    small = SyntheticConfig(num_train=4, num_val=2, seed=3)
    large = SyntheticConfig(num_train=50, num_val=9, seed=3)
    for split in ("train", "val"):
        for i in (0, 1):
            image_small, label_small = make_image(small, split, i)
            image_large, label_large = make_image(large, split, i)
            np.testing.assert_array_equal(image_small, image_large)
            np.testing.assert_array_equal(label_small, label_large)


def test_train_and_val_differ() -> None:
    config = SyntheticConfig(num_train=5, num_val=5)
    train = [make_image(config, "train", i)[0] for i in range(5)]
    val = [make_image(config, "val", i)[0] for i in range(5)]
    for a in train:
        for b in val:
            assert not np.array_equal(a, b)


def test_images_within_split_differ() -> None:
    config = SyntheticConfig(num_train=5, num_val=1)
    images = [image for _, image, _ in iter_split(config, "train")]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert not np.array_equal(images[i], images[j])


# ----------------------------------------------------------------------------
# content statistics
# ----------------------------------------------------------------------------


def test_every_class_appears(default_images: Images) -> None:
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    images_with_class = np.zeros(NUM_CLASSES, dtype=np.int64)
    for _, label in default_images:
        bincount = np.bincount(label.ravel(), minlength=NUM_CLASSES)
        counts += bincount
        images_with_class += bincount > 0
    assert (images_with_class >= 5).all(), images_with_class
    freq = counts / counts.sum()
    assert (freq > 0.01).all(), freq
    images_with_things = sum(np.isin(label, THING_CLASSES).any() for _, label in default_images)
    assert images_with_things >= 25


def test_thing_sizes_are_reasonable(default_images: Images) -> None:
    short = 144
    instances = _instances(default_images, 1)
    areas = [pixels.shape[0] for cls, pixels in instances if cls in THING_CLASSES]
    assert len(areas) >= 40
    # unoccluded things are roughly 15-35 % of the short side across
    assert np.median(areas) > (0.15 * short) ** 2 * 0.4
    assert np.percentile(areas, 90) < (0.35 * short) ** 2 * 1.1


def test_regions_are_textured(default_images: Images) -> None:
    """Every sizeable region carries visible texture (two contrasting colours), not a flat fill."""
    for cls, pixels in _instances(default_images, 200):
        spread = np.linalg.norm(pixels.std(axis=0))
        assert spread > 12.0, (CLASS_NAMES[cls], spread)


def test_colour_does_not_identify_class(default_images: Images) -> None:
    instances = _instances(default_images)
    means: dict[int, list[np.ndarray]] = {c: [] for c in range(NUM_CLASSES)}
    for cls, pixels in instances:
        means[cls].append(pixels.mean(axis=0))
    per_class = {c: np.asarray(m) for c, m in means.items()}
    assert all(len(m) >= 5 for m in per_class.values()), {c: len(m) for c, m in per_class.items()}
    # the same class gets very different mean colours in different regions / images
    for cls, m in per_class.items():
        assert m.std(axis=0).mean() > 25.0, (CLASS_NAMES[cls], m.std(axis=0))
        assert np.ptp(m, axis=0).max() > 100.0, (CLASS_NAMES[cls], np.ptp(m, axis=0))
    # class means of the mean colour are nearly identical relative to the within-class spread
    all_means = np.concatenate(list(per_class.values()))
    centres = np.stack([m.mean(axis=0) for m in per_class.values()])
    within = np.mean([((m - m.mean(axis=0)) ** 2).sum(axis=1).mean() for m in per_class.values()])
    between = ((centres - all_means.mean(axis=0)) ** 2).sum(axis=1).mean()
    assert between / within < 0.2, between / within


@pytest.mark.parametrize("seed", [0, 1])
def test_rgb_kmeans_is_far_from_perfect(
    default_images: Images, seed: int
) -> None:
    """k-means on raw RGB pixels cannot recover the classes (measured purity ~0.27)."""
    images = default_images[:30]
    pixels = np.concatenate([image.reshape(-1, 3) for image, _ in images]).astype(np.float64)
    labels = np.concatenate([label.ravel() for _, label in images])
    rng = np.random.default_rng(seed)
    sample = rng.choice(pixels.shape[0], 20_000, replace=False)
    centroids, _ = kmeans2(pixels[sample], NUM_CLASSES, seed=seed, minit="++")
    codes, _ = vq(pixels, centroids)
    confusion = np.zeros((len(centroids), NUM_CLASSES), dtype=np.int64)
    np.add.at(confusion, (codes, labels), 1)
    purity = confusion.max(axis=1).sum() / confusion.sum()
    majority = np.bincount(labels, minlength=NUM_CLASSES).max() / labels.size
    assert purity < 0.45, purity
    assert purity < majority + 0.15, (purity, majority)


# ----------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_train", 0),
        ("num_train", -3),
        ("num_val", 0),
        ("height", 31),
        ("height", 0),
        ("width", 16),
        ("max_things", -1),
        ("seed", -5),
        ("height", 64.5),
        ("num_train", True),
    ],
)
def test_config_validation(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"{field}.*{value}"):
        SyntheticConfig(**{field: value})  # type: ignore[arg-type]


def test_config_accepts_boundary_values() -> None:
    config = SyntheticConfig(num_train=1, num_val=1, height=32, width=32, max_things=0, seed=0)
    assert config.height == 32


@pytest.mark.parametrize("split", ["test", "Train", "", "validation"])
def test_unknown_split(split: str) -> None:
    config = SyntheticConfig(num_train=2, num_val=2)
    with pytest.raises(ValueError, match="train.*val") as excinfo:
        iter_split(config, split)
    assert repr(split) in str(excinfo.value)
    with pytest.raises(ValueError, match="train.*val"):
        make_image(config, split, 0)


@pytest.mark.parametrize(("split", "index"), [("train", 2), ("val", 3), ("train", -1)])
def test_index_out_of_range(split: str, index: int) -> None:
    config = SyntheticConfig(num_train=2, num_val=3)
    with pytest.raises(IndexError):
        make_image(config, split, index)
