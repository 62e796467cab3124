"""Known-answer tests for unseg.core.metrics."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from unseg.core.metrics import (
    ConfusionAccumulator,
    SegmentationScores,
    confusion_matrix,
    hungarian_match,
    majority_match,
    remap_confusion,
    scores_from_confusion,
    subset_miou,
)

# 3 classes x 3 clusters. Best permutation (by enumerating all 6):
# cluster 2 -> class 0 (30), cluster 1 -> class 1 (40), cluster 0 -> class 2
# (20): 90 of 115 pixels.
HAND_HIST = np.array(
    [
        [10, 2, 30],
        [5, 40, 1],
        [20, 3, 4],
    ]
)
# Remapped [[30, 2, 10], [1, 40, 5], [4, 3, 20]]:
# IoU_0 = 30 / (30 + 5 + 12), IoU_1 = 40 / (40 + 5 + 6), IoU_2 = 20 / (20 + 15 + 7)
HAND_IOU = 100 * np.array([30 / 47, 40 / 51, 20 / 42])

# 2 classes x 3 clusters (over-clustering).
OVER_HIST = np.array(
    [
        [50, 10, 5],
        [5, 30, 20],
    ]
)


@pytest.mark.parametrize("num_classes", [2, 5, 27])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_perfect_prediction_under_any_permutation(num_classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=(4, 32, 32))
    assert len(np.unique(labels)) == num_classes
    perm = rng.permutation(num_classes)
    preds = perm[labels]

    hist = confusion_matrix(labels, preds, num_classes, num_classes)
    for method in ("hungarian", "majority"):
        scores = scores_from_confusion(hist, method)
        assert scores.acc == pytest.approx(100.0)
        assert scores.miou == pytest.approx(100.0)
        np.testing.assert_allclose(scores.iou, 100.0)
        np.testing.assert_array_equal(scores.mapping[perm], np.arange(num_classes))


def test_confusion_matrix_counts() -> None:
    labels = np.array([[0, 0, 1], [1, 2, 2]], dtype=np.uint8)
    preds = np.array([[1, 1, 0], [1, 2, 3]])
    hist = confusion_matrix(labels, preds, num_classes=3, num_clusters=4)
    expected = np.array([[0, 2, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]])
    np.testing.assert_array_equal(hist, expected)
    assert hist.dtype == np.int64


@pytest.mark.parametrize("ignore_value", [255, -1, 3, 100])
def test_ignored_pixels_do_not_count(ignore_value: int) -> None:
    labels = np.array([0, 1, 2, 0, ignore_value, ignore_value])
    # wrong (but in-range) predictions at the ignored pixels
    preds = np.array([0, 1, 2, 0, 1, 2])
    hist = confusion_matrix(labels, preds, num_classes=3, num_clusters=3)
    assert hist.sum() == 4
    scores = scores_from_confusion(hist)
    assert scores.acc == pytest.approx(100.0)
    assert scores.miou == pytest.approx(100.0)


def test_ignored_pixels_may_have_out_of_range_predictions() -> None:
    labels = np.array([0, 1, 255])
    preds = np.array([0, 1, 255])
    hist = confusion_matrix(labels, preds, num_classes=2, num_clusters=2)
    np.testing.assert_array_equal(hist, np.eye(2))


def test_hand_computed_hungarian() -> None:
    np.testing.assert_array_equal(hungarian_match(HAND_HIST), [2, 1, 0])
    scores = scores_from_confusion(HAND_HIST, "hungarian")
    assert scores.acc == pytest.approx(100 * 90 / 115)
    np.testing.assert_allclose(scores.iou, HAND_IOU)
    assert scores.miou == pytest.approx(HAND_IOU.mean())
    np.testing.assert_array_equal(
        remap_confusion(HAND_HIST, scores.mapping),
        [[30, 2, 10], [1, 40, 5], [4, 3, 20]],
    )


def test_hand_computed_majority_square() -> None:
    # cluster 0 -> class 2 (20), cluster 1 -> class 1 (40), cluster 2 -> class 0 (30)
    # the majority vote agrees with the Hungarian matching here.
    np.testing.assert_array_equal(majority_match(HAND_HIST), [2, 1, 0])
    scores = scores_from_confusion(HAND_HIST, "majority")
    np.testing.assert_allclose(scores.iou, HAND_IOU)


def test_over_clustering_hungarian() -> None:
    # class 0 -> cluster 0 (50), class 1 -> cluster 1 (30): 80 of 120 pixels;
    # cluster 2 is unmatched, its 25 pixels are FN of their class only.
    mapping = hungarian_match(OVER_HIST)
    np.testing.assert_array_equal(mapping, [0, 1, -1])
    np.testing.assert_array_equal(remap_confusion(OVER_HIST, mapping), [[50, 10], [5, 30]])
    scores = scores_from_confusion(OVER_HIST, "hungarian")
    assert scores.acc == pytest.approx(100 * 80 / 120)
    # IoU_0 = 50 / (50 + 5 + 15), IoU_1 = 30 / (30 + 10 + 25)
    expected = 100 * np.array([50 / 70, 30 / 65])
    np.testing.assert_allclose(scores.iou, expected)
    assert scores.miou == pytest.approx(expected.mean())


def test_over_clustering_majority() -> None:
    # cluster 0 -> 0 (50 vs 5), cluster 1 -> 1 (30 vs 10), cluster 2 -> 1 (20 vs 5)
    mapping = majority_match(OVER_HIST)
    np.testing.assert_array_equal(mapping, [0, 1, 1])
    np.testing.assert_array_equal(remap_confusion(OVER_HIST, mapping), [[50, 15], [5, 50]])
    scores = scores_from_confusion(OVER_HIST, "majority")
    assert scores.acc == pytest.approx(100 * 100 / 120)
    np.testing.assert_allclose(scores.iou, [100 * 50 / 70, 100 * 50 / 70])


def test_majority_unpredicted_cluster_is_unmatched() -> None:
    hist = np.array([[5, 0, 1], [0, 0, 7]])
    np.testing.assert_array_equal(majority_match(hist), [0, -1, 1])


def test_majority_allows_fewer_clusters_than_classes() -> None:
    hist = np.array([[5, 0], [0, 7], [2, 1]])
    scores = scores_from_confusion(hist, "majority")
    assert scores.acc == pytest.approx(100 * 12 / 15)
    # class 2 is never predicted: IoU 0 (3 FN), not NaN
    np.testing.assert_allclose(scores.iou, [100 * 5 / 7, 100 * 7 / 8, 0.0])


def test_absent_class_is_nan_and_excluded() -> None:
    hist = np.array([[10, 0, 0], [0, 5, 0], [0, 0, 0]])
    scores = scores_from_confusion(hist)
    assert scores.iou[:2] == pytest.approx([100.0, 100.0])
    assert np.isnan(scores.iou[2])
    assert scores.miou == pytest.approx(100.0)
    assert scores.acc == pytest.approx(100.0)


def test_class_absent_from_gt_but_predicted_scores_zero() -> None:
    hist = np.array([[10, 0, 2], [0, 5, 0], [0, 0, 0]])
    scores = scores_from_confusion(hist)
    expected = [100 * 10 / 12, 100.0, 0.0]
    np.testing.assert_allclose(scores.iou, expected)
    assert scores.miou == pytest.approx(np.mean(expected))


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(np.zeros((2, 3), int), np.zeros((3, 2), int), 2, 2)


@pytest.mark.parametrize("bad_value", [-1, 4, 255])
def test_preds_out_of_range_raises(bad_value: int) -> None:
    labels = np.array([0, 1, 1])
    preds = np.array([0, bad_value, bad_value])
    with pytest.raises(ValueError, match=r"2 evaluated pixels .*\[0, 4\)"):
        confusion_matrix(labels, preds, num_classes=2, num_clusters=4)


def test_float_inputs_raise() -> None:
    with pytest.raises(TypeError):
        confusion_matrix(np.zeros(3), np.zeros(3, int), 2, 2)


def test_hungarian_needs_enough_clusters() -> None:
    with pytest.raises(ValueError, match="at least as many clusters"):
        hungarian_match(np.ones((3, 2), dtype=np.int64))
    with pytest.raises(ValueError):
        scores_from_confusion(np.ones((3, 2), dtype=np.int64), "hungarian")


def test_unknown_mapping_raises() -> None:
    with pytest.raises(ValueError, match="hungarian.*majority"):
        scores_from_confusion(HAND_HIST, "best")


def test_remap_rejects_bad_mapping() -> None:
    with pytest.raises(ValueError):
        remap_confusion(HAND_HIST, np.array([0, 1]))
    with pytest.raises(ValueError):
        remap_confusion(HAND_HIST, np.array([0, 1, 3]))


@pytest.mark.parametrize("num_clusters", [5, 8])
def test_accumulator_matches_one_shot(num_clusters: int) -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 6, size=(6, 20, 24))  # 5 is ignored (K = 5)
    labels[labels == 5] = 255
    preds = rng.integers(0, num_clusters, size=labels.shape)

    accumulator = ConfusionAccumulator(num_classes=5, num_clusters=num_clusters)
    accumulator.update(labels[:1], preds[:1])  # a batch of one
    for label, pred in zip(labels[1:4], preds[1:4], strict=True):  # single images
        accumulator.update(label, pred)
    accumulator.update(labels[4:], preds[4:])  # a batch

    one_shot = confusion_matrix(labels, preds, 5, num_clusters)
    np.testing.assert_array_equal(accumulator.hist, one_shot)
    for method in ("hungarian", "majority"):
        streamed = accumulator.scores(method)
        direct = scores_from_confusion(one_shot, method)
        assert streamed.acc == direct.acc
        np.testing.assert_array_equal(streamed.iou, direct.iou)

    accumulator.reset()
    assert accumulator.hist.sum() == 0


def test_accumulator_hist_is_a_copy() -> None:
    accumulator = ConfusionAccumulator(2, 2)
    accumulator.update(np.array([0, 1]), np.array([0, 1]))
    accumulator.hist[0, 0] = 100
    assert accumulator.hist[0, 0] == 1


def test_as_dict_keys_and_nan_omission() -> None:
    scores = SegmentationScores(
        acc=90.0, miou=50.0, iou=np.array([60.0, np.nan, 40.0]), mapping=np.arange(3)
    )
    assert scores.as_dict() == {"acc": 90.0, "miou": 50.0, "iou/0": 60.0, "iou/2": 40.0}
    named = scores.as_dict(["sky", "road", "tree"], prefix="val/")
    assert named == {
        "val/acc": 90.0,
        "val/miou": 50.0,
        "val/iou/sky": 60.0,
        "val/iou/tree": 40.0,
    }
    assert all(type(v) is float for v in named.values())
    with pytest.raises(ValueError):
        scores.as_dict(["sky"])


def test_subset_miou() -> None:
    iou = np.array([10.0, np.nan, 30.0, 50.0])
    assert subset_miou(iou, [0, 1, 2]) == pytest.approx(20.0)
    assert subset_miou(iou, [3]) == pytest.approx(50.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(subset_miou(iou, [1]))
        assert np.isnan(subset_miou(iou, []))
    with pytest.raises(ValueError):
        subset_miou(iou, [4])


# --- matching that greedy gets wrong, edge sizes, and the checks' messages -------------------------------------------

def test_hungarian_beats_greedy_where_greedy_fails() -> None:
    """[[5, 4], [4, 0]]: greedy takes the 5 first and ends with 5 + 0; the optimum pairs the two 4s (8 pixels)."""
    hist = np.array([[5, 4], [4, 0]])
    mapping = hungarian_match(hist)
    np.testing.assert_array_equal(mapping, [1, 0])
    assert mapping.dtype == np.int64
    scores = scores_from_confusion(hist)
    assert scores.acc == pytest.approx(100 * 8 / 13)
    # class 0: TP 4 (cluster 1), FP 0, FN 5; class 1: TP 4 (cluster 0), FP 5, FN 0
    np.testing.assert_allclose(scores.iou, [100 * 4 / 9, 100 * 4 / 9])


def test_hungarian_beats_greedy_with_over_clustering() -> None:
    """3 classes x 4 clusters where taking the largest cell first (9) costs 3 pixels against the optimum."""
    hist = np.array([[9, 8, 0, 0], [8, 0, 0, 1], [0, 0, 2, 0]])
    # greedy: (0,0)=9, then class 1 gets cluster 3 (1), class 2 cluster 2 (2): 12; optimum: 8 + 8 + 2 = 18
    np.testing.assert_array_equal(hungarian_match(hist), [1, 0, 2, -1])
    assert scores_from_confusion(hist).acc == pytest.approx(100 * 18 / 28)


def test_one_class_one_cluster_is_valid() -> None:
    """K = C = 1 is the smallest valid problem (every check uses < 1, not <= 1)."""
    hist = confusion_matrix(np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.int64), 1, 1)
    np.testing.assert_array_equal(hist, [[3]])
    assert hist.dtype == np.int64
    accumulator = ConfusionAccumulator(1, 1)
    accumulator.update(np.zeros(2, dtype=np.int64), np.zeros(2, dtype=np.int64))
    assert accumulator.hist.dtype == np.int64
    assert accumulator.scores().acc == 100.0


def test_a_single_evaluated_pixel_is_scored() -> None:
    """One pixel, rightly predicted: accuracy and IoU are 100, not NaN."""
    scores = scores_from_confusion(np.array([[1]]))
    assert scores.acc == 100.0
    np.testing.assert_array_equal(scores.iou, [100.0])


def test_a_class_with_one_pixel_has_an_iou() -> None:
    """A class whose TP + FP + FN is exactly 1 gets IoU 100 (its own pixel), not NaN."""
    scores = scores_from_confusion(np.array([[1, 0], [0, 5]]))
    np.testing.assert_array_equal(scores.iou, [100.0, 100.0])


def test_empty_confusion_gives_nan_accuracy_without_warnings() -> None:
    """No evaluated pixel: accuracy and every IoU are NaN, and numpy's 0/0 warnings stay silent."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = scores_from_confusion(np.zeros((2, 2), dtype=np.int64))
    assert np.isnan(scores.acc)
    assert np.isnan(scores.iou).all()


def test_accumulator_scores_default_to_hungarian() -> None:
    """scores() without arguments is the one-to-one Hungarian result, not the majority vote."""
    accumulator = ConfusionAccumulator(2, 3)
    labels = np.repeat([0, 1], [65, 55])
    preds = np.concatenate([np.repeat([0, 1, 2], [50, 10, 5]), np.repeat([0, 1, 2], [5, 30, 20])])
    accumulator.update(labels, preds)
    assert accumulator.scores().acc == scores_from_confusion(OVER_HIST, "hungarian").acc
    assert accumulator.scores().acc != scores_from_confusion(OVER_HIST, "majority").acc


def test_float_confusion_is_counted_as_integers() -> None:
    """A float hist (e.g. summed in float) is validated to int64 before matching: the remapped matrix is int64."""
    remapped = remap_confusion(np.array([[3.0, 1.0], [0.0, 2.0]]), np.array([0, 1]))
    assert remapped.dtype == np.int64
    np.testing.assert_array_equal(remapped, [[3, 1], [0, 2]])


INTS = np.zeros(2, dtype=np.int64)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: confusion_matrix(INTS, INTS, 0, 2), ValueError, "must be positive, got 0 and 2"),
        (lambda: confusion_matrix(INTS, INTS, 2, 0), ValueError, "must be positive, got 2 and 0"),
        (lambda: ConfusionAccumulator(0, 2), ValueError, "must be positive, got 0 and 2"),
        (lambda: ConfusionAccumulator(2, 0), ValueError, "must be positive, got 2 and 0"),
        (lambda: confusion_matrix(np.zeros(2), INTS, 2, 2), TypeError, "^labels must have an integer dtype"),
        (lambda: confusion_matrix(INTS, np.zeros(2), 2, 2), TypeError, "^preds must have an integer dtype"),
        (lambda: hungarian_match(np.zeros(3)), ValueError, "non-empty 2-D array, got shape"),
        (lambda: hungarian_match(np.zeros((0, 3))), ValueError, "non-empty 2-D array, got shape"),
        (lambda: hungarian_match(np.array([[1, -1]])), ValueError, "^hist must not contain negative counts$"),
        (lambda: remap_confusion(np.ones((2, 2)), np.array([0])), ValueError, r"mapping must have shape \(2,\)"),
        (lambda: remap_confusion(np.ones((2, 2)), np.array([-2, 0])), ValueError, r"lie in \[-1, 2\)"),
        (lambda: subset_miou(np.array([1.0, 2.0]), [2]), ValueError, r"class indices must lie in \[0, 2\)"),
        (lambda: SegmentationScores(1.0, 1.0, np.ones(2), np.zeros(2)).as_dict(["a"]), ValueError,
         "got 1 class names for 2 classes"),
    ],
)
def test_bad_input_errors_say_what_is_wrong(call, error: type[Exception], match: str) -> None:
    """Every check of the metrics raises with a message naming the problem."""
    with pytest.raises(error, match=match):
        call()


def test_a_one_by_one_hist_passes_validation() -> None:
    """A (1, 1) hist is non-empty: it is matched, not rejected."""
    np.testing.assert_array_equal(hungarian_match(np.array([[0]])), [0])
