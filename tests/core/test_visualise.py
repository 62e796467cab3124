"""Tests for unseg.core.visualise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402

from unseg.core.visualise import (  # noqa: E402
    colorize,
    label_palette,
    plot_confusion,
    plot_iou_bars,
    plot_overlay_grid,
    plot_training_curves,
)


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path)
    assert path.exists()
    assert path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("num_classes", [0, 1, 7, 20, 27, 171, 500])
def test_palette_shape_and_uniqueness(num_classes: int) -> None:
    palette = label_palette(num_classes)
    assert palette.shape == (num_classes, 3)
    assert palette.dtype == np.uint8
    assert len({tuple(c) for c in palette}) == num_classes
    assert not np.any(np.all(palette == 0, axis=1)), "black is reserved for ignore"


def test_palette_is_deterministic_and_prefix_stable() -> None:
    np.testing.assert_array_equal(label_palette(30), label_palette(30))
    np.testing.assert_array_equal(label_palette(30)[:10], label_palette(10))


def test_palette_rejects_negative() -> None:
    with pytest.raises(ValueError):
        label_palette(-1)


def test_colorize_maps_ids_and_ignore() -> None:
    palette = label_palette(3)
    label = np.array([[0, 1], [2, 255], [-1, 3]])
    image = colorize(label, palette)
    assert image.shape == (3, 2, 3)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image[0, 0], palette[0])
    np.testing.assert_array_equal(image[0, 1], palette[1])
    np.testing.assert_array_equal(image[1, 0], palette[2])
    for row, col in [(1, 1), (2, 0), (2, 1)]:  # ignore, -1, outside palette
        np.testing.assert_array_equal(image[row, col], [0, 0, 0])


def test_colorize_custom_ignore_index() -> None:
    palette = label_palette(3)
    image = colorize(np.array([[1, 2]], dtype=np.uint8), palette, ignore_index=2)
    np.testing.assert_array_equal(image[0, 0], palette[1])
    np.testing.assert_array_equal(image[0, 1], [0, 0, 0])


@pytest.mark.parametrize("num_classes", [3, 27, 40])
def test_plot_confusion(tmp_path: Path, num_classes: int) -> None:
    rng = np.random.default_rng(0)
    hist = rng.integers(0, 50, size=(num_classes, num_classes)) + 200 * np.eye(num_classes, dtype=int)
    hist[0] = 0  # a class absent from the ground truth
    names = [f"class_{k}" for k in range(num_classes)]
    fig = plot_confusion(hist, names, "Confusion")
    assert isinstance(fig, Figure)
    heatmap = fig.axes[0]
    assert [t.get_text() for t in heatmap.get_xticklabels()] == names
    assert [t.get_text() for t in heatmap.get_yticklabels()] == names
    assert (len(heatmap.texts) == num_classes**2) == (num_classes <= 30)
    _save(fig, tmp_path / "confusion.png")


def test_plot_confusion_shape_mismatch() -> None:
    with pytest.raises(ValueError):
        plot_confusion(np.eye(3), ["a", "b"], "bad")


@pytest.mark.parametrize("num_images,num_methods", [(1, 1), (3, 2)])
def test_plot_overlay_grid(tmp_path: Path, num_images: int, num_methods: int) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(num_images, 24, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, size=(num_images, 24, 32))
    labels[:, :2] = 255
    predictions = {f"method_{m}": rng.integers(-1, 4, size=labels.shape) for m in range(num_methods)}
    fig = plot_overlay_grid(images, labels, predictions, label_palette(4))
    assert isinstance(fig, Figure)
    assert len(fig.axes) == num_images * (2 + num_methods)
    titles = [ax.get_title() for ax in fig.axes[: 2 + num_methods]]
    assert titles == ["Image", "Ground truth", *predictions]
    _save(fig, tmp_path / "overlay.png")


def test_plot_overlay_grid_shape_mismatch() -> None:
    images = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    labels = np.zeros((2, 8, 8), dtype=np.int64)
    with pytest.raises(ValueError):
        plot_overlay_grid(images, labels, {"m": np.zeros((2, 8, 9), int)}, label_palette(2))
    with pytest.raises(ValueError):
        plot_overlay_grid(images, labels[:1], {}, label_palette(2))


def test_plot_iou_bars(tmp_path: Path) -> None:
    names = ["road", "sky", "person", "car", "building"]
    iou = {
        "PiCIE": np.array([60.0, 80.0, np.nan, 20.0, 45.0]),
        "PriMaPs": np.array([70.0, 85.0, np.nan, 35.0, 50.0]),
    }
    fig = plot_iou_bars(iou, names)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.patches) == 2 * 4  # NaN classes draw no bar
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["PiCIE (mIoU 51.2)", "PriMaPs (mIoU 60.0)"]
    _save(fig, tmp_path / "iou.png")


def test_plot_iou_bars_shape_mismatch() -> None:
    with pytest.raises(ValueError):
        plot_iou_bars({"m": np.zeros(3)}, ["a", "b"])


def test_plot_training_curves(tmp_path: Path) -> None:
    history = {
        "picie/loss": [{"value": 2.0, "step": 2}, {"value": 3.0, "step": 1}],  # unsorted steps get sorted
        "picie/val_miou": [{"value": 10.0, "step": 0}, {"value": 12.0, "step": 1}, {"value": 15.0, "step": 2}],
        "picie/pretrained_init": [{"value": 1.0, "step": 0}],  # a single point is a fact, not a curve
    }
    fig = plot_training_curves(history, "PiCIE training", columns=1)
    assert fig.get_suptitle() == "PiCIE training"
    assert [ax.get_title() for ax in fig.axes] == ["picie/loss", "picie/val_miou"]
    x, y = fig.axes[0].lines[0].get_data()
    assert list(x) == [1, 2] and list(y) == [3.0, 2.0]
    assert list(fig.axes[1].lines[0].get_ydata()) == [10.0, 12.0, 15.0]
    _save(fig, tmp_path / "curves.png")


def test_plot_training_curves_without_curves(tmp_path: Path) -> None:
    fig = plot_training_curves({"m/x": [{"value": 1.0, "step": 0}]}, "one epoch")
    assert [t.get_text() for t in fig.axes[0].texts] == ["no metric has more than one step"]
    _save(fig, tmp_path / "none.png")
