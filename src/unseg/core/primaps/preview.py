"""A look at the stored PriMaPs: image | label map (mask ids coloured, ignore black), a few train images."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from unseg.core.visualise import colorize, label_palette


def plot_mask_preview(images: np.ndarray, masks: np.ndarray, columns: int = 4) -> Figure:
    """Pairs of (image, PriMaPs label map) on a grid.

    Args:
        images: uint8 (N, H, W, 3).
        masks: uint8 (N, H, W) mask ids, 255 = ignore (drawn black).
        columns: image/mask pairs per row.

    Returns:
        The figure.

    Raises:
        ValueError: shapes disagree or there is no image.
    """
    if len(images) == 0 or images.shape[:3] != masks.shape:
        raise ValueError(f"plot_mask_preview: images {images.shape} and masks {masks.shape} must be (N, H, W[, 3]), "
                         "N >= 1")
    valid = masks[masks != 255]
    palette = label_palette(int(valid.max()) + 1 if valid.size else 1)
    rows = (len(images) + columns - 1) // columns
    pairs = min(columns, len(images))
    fig = Figure(figsize=(2.2 * 2 * pairs, 2.2 * rows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 2 * pairs, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        row, col = divmod(i, columns)
        axes[row, 2 * col].imshow(image)
        axes[row, 2 * col + 1].imshow(colorize(mask, palette, 255), interpolation="nearest")
        axes[row, 2 * col + 1].set_title(f"{len(np.unique(mask[mask != 255]))} masks", fontsize=8)
    fig.suptitle("PriMaPs (train): image | mask proposals (black: ignore)", fontsize=10)
    return fig
