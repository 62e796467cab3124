"""Evaluation of unsupervised semantic segmentation.

Implements the protocol used by PiCIE [0] and PriMaPs [1]:

1. Predictions are cluster ids in ``[0, C)``; ``C = K`` (number of classes)
   for the standard setting or ``C > K`` for over-clustering.
2. A confusion matrix ``hist[gt, pred]`` of shape ``(K, C)`` is accumulated
   over all evaluated pixels; pixels whose label is outside ``[0, K)`` (for
   example the ignore index 255) are not evaluated.
3. Clusters are matched to classes, either one-to-one with the Hungarian
   algorithm (maximising the number of matched pixels) or many-to-one by
   majority vote (each cluster goes to the class it overlaps most).
4. Pixel accuracy is ``matched pixels / evaluated pixels``; the per-class
   IoU is ``TP / (TP + FP + FN)``; mIoU is the mean over classes, excluding
   classes that are absent from the ground truth and never predicted (their
   IoU is NaN). All values are in percent.

With over-clustering and Hungarian matching only the ``K`` best-matched
clusters are used; pixels of the remaining clusters count as wrong (a false
negative for their ground-truth class, a false positive of no class).

[0] J. H. Cho et al., "PiCIE: Unsupervised Semantic Segmentation using
    Invariance and Equivariance in Clustering", CVPR 2021.
    https://arxiv.org/abs/2103.17070
[1] O. Hahn et al., "Boosting Unsupervised Semantic Segmentation with
    Principal Mask Proposals", TMLR 2024. https://arxiv.org/abs/2404.16818
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

logger = logging.getLogger(__name__)

MAPPINGS: tuple[str, ...] = ("hungarian", "majority")


def _as_int_array(array: np.ndarray, name: str) -> np.ndarray:
    """Flattens an integer array to int64.

    Args:
        array: Integer array of any shape.
        name: Name used in error messages.

    Returns:
        The flattened array, shape (N,), dtype int64.

    Raises:
        TypeError: If the array does not have an integer dtype.
    """
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must have an integer dtype, got {array.dtype}")
    return array.reshape(-1).astype(np.int64, copy=False)


def confusion_matrix(
    labels: np.ndarray, preds: np.ndarray, num_classes: int, num_clusters: int
) -> np.ndarray:
    """Counts ground-truth class vs. predicted cluster over evaluated pixels.

    Pixels whose label is outside ``[0, num_classes)`` (e.g. 255 or -1) are
    ignored, whatever their prediction.

    Args:
        labels: Ground-truth class ids, integer array of any shape S.
        preds: Predicted cluster ids, integer array of shape S, values in
            ``[0, num_clusters)`` at every evaluated pixel.
        num_classes: Number of ground-truth classes K.
        num_clusters: Number of clusters C.

    Returns:
        ``hist`` of shape (K, C), dtype int64, ``hist[gt, pred]`` = number
        of pixels.

    Raises:
        ValueError: If the shapes differ, if K or C is not positive, or if an
            evaluated pixel has a prediction outside ``[0, num_clusters)``.
        TypeError: If labels or preds are not integer arrays.
    """
    if num_classes < 1 or num_clusters < 1:
        raise ValueError(
            f"num_classes and num_clusters must be positive, got "
            f"{num_classes} and {num_clusters}"
        )
    labels = np.asarray(labels)
    preds = np.asarray(preds)
    if labels.shape != preds.shape:
        raise ValueError(
            f"labels and preds must have the same shape, got {labels.shape} "
            f"and {preds.shape}"
        )
    flat_labels = _as_int_array(labels, "labels")
    flat_preds = _as_int_array(preds, "preds")

    valid = (flat_labels >= 0) & (flat_labels < num_classes)
    flat_labels = flat_labels[valid]
    flat_preds = flat_preds[valid]

    out_of_range = (flat_preds < 0) | (flat_preds >= num_clusters)
    num_bad = int(np.count_nonzero(out_of_range))
    if num_bad:
        bad = flat_preds[out_of_range]
        raise ValueError(
            f"{num_bad} evaluated pixels have predictions outside "
            f"[0, {num_clusters}) (min {bad.min()}, max {bad.max()})"
        )

    counts = np.bincount(
        flat_labels * num_clusters + flat_preds,
        minlength=num_classes * num_clusters,
    )
    return counts.reshape(num_classes, num_clusters).astype(np.int64, copy=False)


def _check_hist(hist: np.ndarray) -> np.ndarray:
    """Validates a confusion matrix.

    Args:
        hist: Confusion matrix of shape (K, C).

    Returns:
        The matrix as an int64 array of shape (K, C).

    Raises:
        ValueError: If it is not 2-D, is empty, or has negative counts.
    """
    hist = np.asarray(hist)
    if hist.ndim != 2 or hist.size == 0:
        raise ValueError(f"hist must be a non-empty 2-D array, got shape {hist.shape}")
    if np.any(hist < 0):
        raise ValueError("hist must not contain negative counts")
    return hist.astype(np.int64, copy=False)


def hungarian_match(hist: np.ndarray) -> np.ndarray:
    """Matches clusters to classes one-to-one, maximising matched pixels.

    Args:
        hist: Confusion matrix of shape (K, C) with C >= K.

    Returns:
        ``mapping`` of shape (C,), dtype int64: the class of each cluster, or
        -1 for the ``C - K`` clusters left unmatched when C > K.

    Raises:
        ValueError: If C < K (some class could not be matched).
    """
    hist = _check_hist(hist)
    num_classes, num_clusters = hist.shape
    if num_clusters < num_classes:
        raise ValueError(
            f"Hungarian matching needs at least as many clusters as classes, "
            f"got {num_clusters} clusters for {num_classes} classes; "
            f"use mapping='majority' instead"
        )
    class_idx, cluster_idx = linear_sum_assignment(hist, maximize=True)
    mapping = np.full(num_clusters, -1, dtype=np.int64)
    mapping[cluster_idx] = class_idx
    return mapping


def majority_match(hist: np.ndarray) -> np.ndarray:
    """Maps every cluster to the class it overlaps most (many-to-one).

    Args:
        hist: Confusion matrix of shape (K, C).

    Returns:
        ``mapping`` of shape (C,), dtype int64: the majority class of each
        cluster, or -1 for clusters that were never predicted.
    """
    hist = _check_hist(hist)
    mapping = hist.argmax(axis=0).astype(np.int64)
    mapping[hist.sum(axis=0) == 0] = -1
    return mapping


def remap_confusion(hist: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """Turns a class-vs-cluster matrix into a class-vs-class matrix.

    The columns of clusters mapped to the same class are summed; columns of
    clusters mapped to -1 are dropped, so their pixels are false negatives of
    their ground-truth class only (the row sums of the result can be smaller
    than those of ``hist``).

    Args:
        hist: Confusion matrix of shape (K, C).
        mapping: Class of each cluster, shape (C,), values in ``[-1, K)``.

    Returns:
        Matrix of shape (K, K), dtype int64, ``[gt, mapped prediction]``.

    Raises:
        ValueError: If the mapping has the wrong shape or values.
    """
    hist = _check_hist(hist)
    num_classes, num_clusters = hist.shape
    mapping = np.asarray(mapping)
    if mapping.shape != (num_clusters,):
        raise ValueError(
            f"mapping must have shape ({num_clusters},), got {mapping.shape}"
        )
    if np.any((mapping < -1) | (mapping >= num_classes)):
        raise ValueError(f"mapping values must lie in [-1, {num_classes})")
    matched = np.flatnonzero(mapping >= 0)
    assignment = np.zeros((num_clusters, num_classes), dtype=np.int64)
    assignment[matched, mapping[matched]] = 1
    return hist @ assignment


@dataclass(frozen=True, eq=False)
class SegmentationScores:
    """Scores of one evaluation, all in percent.

    Attributes:
        acc: Pixel accuracy.
        miou: Mean IoU over the classes whose IoU is not NaN.
        iou: Per-class IoU, shape (K,), NaN for classes absent from the
            ground truth and never predicted.
        mapping: Class of each cluster, shape (C,), -1 for unmatched.
    """

    acc: float
    miou: float
    iou: np.ndarray
    mapping: np.ndarray

    def as_dict(
        self, class_names: Sequence[str] | None = None, prefix: str = ""
    ) -> dict[str, float]:
        """Flattens the scores for logging.

        Args:
            class_names: K class names; defaults to the class indices.
            prefix: String prepended to every key (e.g. ``"val/"``).

        Returns:
            ``{prefix + "acc": ..., prefix + "miou": ...,
            prefix + "iou/<name>": ...}``; classes with NaN IoU are omitted.

        Raises:
            ValueError: If the number of class names is not K.
        """
        if class_names is None:
            class_names = [str(k) for k in range(len(self.iou))]
        if len(class_names) != len(self.iou):
            raise ValueError(
                f"got {len(class_names)} class names for {len(self.iou)} classes"
            )
        scores = {f"{prefix}acc": float(self.acc), f"{prefix}miou": float(self.miou)}
        for name, value in zip(class_names, self.iou, strict=True):
            if not np.isnan(value):
                scores[f"{prefix}iou/{name}"] = float(value)
        return scores


def _match(hist: np.ndarray, mapping: str) -> np.ndarray:
    """Computes a cluster-to-class mapping by name.

    Args:
        hist: Confusion matrix of shape (K, C).
        mapping: One of :data:`MAPPINGS`.

    Returns:
        Class of each cluster, shape (C,), -1 for unmatched.

    Raises:
        ValueError: If the mapping name is unknown.
    """
    if mapping == "hungarian":
        return hungarian_match(hist)
    if mapping == "majority":
        return majority_match(hist)
    raise ValueError(f"unknown mapping {mapping!r}, valid options: {list(MAPPINGS)}")


def scores_from_confusion(
    hist: np.ndarray, mapping: str = "hungarian"
) -> SegmentationScores:
    """Computes accuracy and IoU after matching clusters to classes.

    Args:
        hist: Confusion matrix of shape (K, C).
        mapping: ``"hungarian"`` (one-to-one, needs C >= K) or
            ``"majority"`` (many-to-one).

    Returns:
        The scores, in percent.

    Raises:
        ValueError: If the mapping name is unknown, or C < K for Hungarian.
    """
    hist = _check_hist(hist)
    cluster_to_class = _match(hist, mapping)
    matched = remap_confusion(hist, cluster_to_class)

    true_pos = np.diag(matched).astype(np.float64)
    false_pos = matched.sum(axis=0) - true_pos
    false_neg = hist.sum(axis=1) - true_pos  # from hist: unmatched pixels count
    denom = true_pos + false_pos + false_neg
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(denom > 0, 100.0 * true_pos / denom, np.nan)

    total = int(hist.sum())
    if total == 0:
        logger.warning("confusion matrix is empty: no pixel was evaluated")
        acc = float("nan")
    else:
        acc = 100.0 * float(true_pos.sum()) / total
    miou = subset_miou(iou, range(len(iou)))
    logger.debug("%s matching: acc %.2f, mIoU %.2f", mapping, acc, miou)
    return SegmentationScores(acc=acc, miou=miou, iou=iou, mapping=cluster_to_class)


def subset_miou(iou: np.ndarray, classes: Sequence[int]) -> float:
    """Mean IoU over a subset of classes, ignoring NaN entries.

    Useful for e.g. COCO-Stuff "things" and "stuff" splits.

    Args:
        iou: Per-class IoU, shape (K,), may contain NaN.
        classes: Class indices in ``[0, K)``.

    Returns:
        The mean of the non-NaN IoUs of the subset, or NaN (without a
        warning) if there are none.

    Raises:
        ValueError: If a class index is outside ``[0, K)``.
    """
    iou = np.asarray(iou, dtype=np.float64)
    idx = np.asarray(list(classes), dtype=np.int64)
    if np.any((idx < 0) | (idx >= len(iou))):
        raise ValueError(f"class indices must lie in [0, {len(iou)})")
    values = iou[idx]
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


class ConfusionAccumulator:
    """Accumulates a confusion matrix over images or batches.

    Example:
        >>> acc = ConfusionAccumulator(num_classes=27, num_clusters=27)
        >>> for labels, preds in batches:  # doctest: +SKIP
        ...     acc.update(labels, preds)
        >>> acc.scores().miou  # doctest: +SKIP
    """

    def __init__(self, num_classes: int, num_clusters: int) -> None:
        """Creates an empty accumulator.

        Args:
            num_classes: Number of ground-truth classes K.
            num_clusters: Number of clusters C.
        """
        if num_classes < 1 or num_clusters < 1:
            raise ValueError(
                f"num_classes and num_clusters must be positive, got "
                f"{num_classes} and {num_clusters}"
            )
        self.num_classes = num_classes
        self.num_clusters = num_clusters
        self._hist = np.zeros((num_classes, num_clusters), dtype=np.int64)

    def update(self, labels: np.ndarray, preds: np.ndarray) -> None:
        """Adds one image or batch.

        Args:
            labels: Ground-truth class ids, integer array of any shape S.
            preds: Predicted cluster ids, integer array of shape S.
        """
        self._hist += confusion_matrix(
            labels, preds, self.num_classes, self.num_clusters
        )

    def reset(self) -> None:
        """Sets all counts back to zero."""
        self._hist[...] = 0

    @property
    def hist(self) -> np.ndarray:
        """A copy of the confusion matrix, shape (K, C), dtype int64."""
        return self._hist.copy()

    def scores(self, mapping: str = "hungarian") -> SegmentationScores:
        """Scores of everything accumulated so far.

        Args:
            mapping: ``"hungarian"`` or ``"majority"``.

        Returns:
            The scores, in percent.
        """
        return scores_from_confusion(self._hist, mapping=mapping)
