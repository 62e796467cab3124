"""Tests of val evaluation (unseg.core.evaluate): centroid predictions, confusion, scores, table, metrics."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from unseg.core.evaluate import (
    CentroidPredictionStream,
    comparison_table,
    confusion_of,
    mapped_predictions,
    matched_confusion,
    method_scores,
    metrics_of,
)
from unseg.core.store import FieldSpec, Shard, ShardStore, write_store

CPU = torch.device("cpu")


class ListStream:
    """An ArrayStream over in-memory items: field -> (N, *shape) arrays, cut into shards of shard_size."""

    def __init__(self, arrays: dict[str, np.ndarray], shard_size: int = 2, prefix: str = "img",
                 attrs: dict | None = None) -> None:
        self.arrays = arrays
        self.shard_size = shard_size
        count = len(next(iter(arrays.values())))
        self.ids = [f"{prefix}{i:03d}" for i in range(count)]
        self.fields = {name: FieldSpec(str(a.dtype), tuple(a.shape[1:])) for name, a in arrays.items()}
        self.attrs = attrs or {}
        self.fingerprint = f"list-{prefix}-{count}-{shard_size}"

    @property
    def num_shards(self) -> int:
        return (len(self.ids) + self.shard_size - 1) // self.shard_size

    def iter_shards(self, todo: Sequence[int]) -> Iterator[Shard]:
        for index in todo:
            part = slice(index * self.shard_size, (index + 1) * self.shard_size)
            yield Shard(index, self.ids[part], {name: a[part] for name, a in self.arrays.items()})


def make_store(root: Path, shard_size: int = 2, prefix: str = "img", attrs: dict | None = None,
               **arrays: np.ndarray) -> ShardStore:
    write_store(ListStream(arrays, shard_size, prefix, attrs), root, progress=False)
    return ShardStore(root)


def planted_features(grids: np.ndarray, dim: int, seed: int = 0, scale: bool = True) -> np.ndarray:
    """Features (N, dim, h, w) whose pixel (y, x) of item n is the one-hot of grids[n, y, x], times a random
    positive scale when `scale` (cosine is blind to it)."""
    feats = np.eye(dim, dtype=np.float32)[grids].transpose(0, 3, 1, 2)  # (N, dim, h, w)
    if scale:
        feats = feats * np.random.default_rng(seed).uniform(0.5, 4.0, size=(len(grids), 1, *grids.shape[1:]))
    return feats.astype(np.float16)


# ------------------------------------------------------------------------------------- CentroidPredictionStream
GRIDS = np.array([  # 5 items of 3x4 cluster ids in [0, 3): the nearest centroid of every feature pixel
    [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2]],
    [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]],
    [[2, 0, 2, 0], [0, 2, 0, 2], [1, 1, 0, 0]],
    [[0, 1, 2, 0], [1, 2, 0, 1], [2, 0, 1, 2]],
    [[2, 2, 2, 2], [2, 2, 2, 2], [2, 2, 2, 2]],
])


def predict_store(tmp_path: Path, source: ShardStore, field: str, images: bool, centroids: np.ndarray, metric: str,
                  size: tuple[int, int], batch_size: int = 2) -> tuple[CentroidPredictionStream, ShardStore]:
    stream = CentroidPredictionStream(source, field, images, centroids, metric, size, CPU, batch_size=batch_size)
    write_store(stream, tmp_path / "pred", progress=False)
    return stream, ShardStore(tmp_path / "pred")


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_prediction_at_feature_resolution_is_the_planted_nearest_centroid(tmp_path: Path, metric: str) -> None:
    feats = planted_features(GRIDS, dim=3, scale=metric == "cosine")
    source = make_store(tmp_path / "feat", shard_size=3, feat=feats)
    stream, preds = predict_store(tmp_path, source, "feat", False, np.eye(3, dtype=np.float32), metric, (3, 4))

    assert stream.num_shards == source.num_shards == 2
    assert stream.fields == {"pred": FieldSpec("uint8", (3, 4))}
    assert stream.attrs == {"num_clusters": 3, "metric": metric, "source": source.fingerprint}
    assert preds.ids == source.ids
    assert preds.shard_counts == [3, 2]
    np.testing.assert_array_equal(np.concatenate(list(s["pred"] for s in preds.iter_shards())), GRIDS)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_bilinear_upsampling_by_two_keeps_each_output_pixel_with_its_nearest_cell(tmp_path: Path,
                                                                                   metric: str) -> None:
    """With align_corners=False a 2x upsample gives the nearest cell weight 9/16 > 1/2, so with orthonormal
    centroids the answer is the grid repeated 2x2 (and a constant item stays constant at any size)."""
    feats = planted_features(GRIDS, dim=3, scale=metric == "cosine")
    source = make_store(tmp_path / "feat", shard_size=2, feat=feats)
    _, preds = predict_store(tmp_path, source, "feat", False, np.eye(3, dtype=np.float32), metric, (6, 8),
                             batch_size=1)

    expected = GRIDS.repeat(2, axis=1).repeat(2, axis=2)
    got = np.stack([preds.item(i)["pred"] for i in range(len(preds))])
    assert got.shape == (5, 6, 8) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


def test_constant_items_stay_constant_at_a_non_integer_scale(tmp_path: Path) -> None:
    grids = np.stack([np.full((3, 4), k) for k in (1, 0, 2)])
    source = make_store(tmp_path / "feat", feat=planted_features(grids, dim=3))
    _, preds = predict_store(tmp_path, source, "feat", False, np.eye(3, dtype=np.float32), "cosine", (7, 11))
    for i, k in enumerate((1, 0, 2)):
        np.testing.assert_array_equal(preds.item(i)["pred"], np.full((7, 11), k))


@pytest.mark.parametrize(("k", "dtype"), [(256, "uint8"), (257, "int32"), (300, "int32")])
def test_more_than_256_centroids_predict_int32(tmp_path: Path, k: int, dtype: str) -> None:
    """Cluster ids up to 255 fit uint8; from 257 clusters on, id 256 must not wrap to 0."""
    grids = np.array([[[0, k - 1], [k // 2, 255]]])
    source = make_store(tmp_path / "feat", feat=planted_features(grids, dim=k))
    stream, preds = predict_store(tmp_path, source, "feat", False, np.eye(k, dtype=np.float32), "cosine", (2, 2))
    assert stream.fields["pred"].dtype == dtype
    np.testing.assert_array_equal(preds.item(0)["pred"], grids[0])


# RGB centroids in [0, 1]: dark grey, light grey, red, blue
RGB_CENTROIDS = np.array([[0.2, 0.2, 0.2], [0.6, 0.6, 0.6], [0.9, 0.1, 0.1], [0.1, 0.1, 0.9]], dtype=np.float32)
# uint8 colours and their nearest centroid *after* scaling to [0, 1] (76 ~ 0.3 is nearer 0.2 than 0.6; a forgotten
# /255 would put it and black on another centroid)
RGB_PIXELS = {0: (76, 76, 76), 1: (128, 128, 128), 2: (230, 25, 25), 3: (25, 25, 230), -1: (0, 0, 0)}


def test_images_path_predicts_the_nearest_rgb_centroid(tmp_path: Path) -> None:
    grids = np.array([[[0, 1, 2], [3, 0, 1]], [[2, 2, 3], [3, 1, 0]], [[1, 1, 1], [1, 1, 1]]])
    palette = np.array([RGB_PIXELS[k] for k in range(4)], dtype=np.uint8)
    images = palette[grids]  # (3, 2, 3, 3) uint8
    black = np.zeros((1, 2, 3, 3), np.uint8)  # black is nearest the dark grey
    source = make_store(tmp_path / "img", shard_size=2, image=np.concatenate([images, black]))
    stream, preds = predict_store(tmp_path, source, "image", True, RGB_CENTROIDS, "euclidean", (2, 3))

    assert stream.attrs["num_clusters"] == 4
    got = np.stack([preds.item(i)["pred"] for i in range(len(preds))])
    np.testing.assert_array_equal(got, np.concatenate([grids, np.zeros((1, 2, 3), int)]))


def test_images_path_upsamples_constant_colour_regions(tmp_path: Path) -> None:
    """Left half red, right half blue, upsampled 4x: each half keeps its centroid up to the middle."""
    image = np.empty((1, 4, 4, 3), np.uint8)
    image[:, :, :2], image[:, :, 2:] = RGB_PIXELS[2], RGB_PIXELS[3]
    source = make_store(tmp_path / "img", image=image)
    _, preds = predict_store(tmp_path, source, "image", True, RGB_CENTROIDS, "euclidean", (16, 16))
    expected = np.zeros((16, 16), int)
    expected[:, :8], expected[:, 8:] = 2, 3
    np.testing.assert_array_equal(preds.item(0)["pred"], expected)


def test_fingerprint_follows_centroids_and_size(tmp_path: Path) -> None:
    source = make_store(tmp_path / "feat", feat=planted_features(GRIDS, dim=3))
    eye = np.eye(3, dtype=np.float32)

    def fp(centroids: np.ndarray, size: tuple[int, int]) -> str:
        return CentroidPredictionStream(source, "feat", False, centroids, "cosine", size, CPU).fingerprint

    assert fp(eye, (3, 4)) == fp(eye.copy(), (3, 4))
    assert fp(eye, (3, 4)) != fp(eye, (6, 8))
    assert fp(eye, (3, 4)) != fp(eye[::-1].copy(), (3, 4))


def test_fingerprint_follows_the_bias_metric_and_source(tmp_path: Path) -> None:
    """A probe's bias, the metric and the scored store are part of what the predictions were made from."""
    source = make_store(tmp_path / "feat", feat=planted_features(GRIDS, dim=3))
    other = make_store(tmp_path / "other", prefix="x", feat=planted_features(GRIDS, dim=3))
    eye = np.eye(3, dtype=np.float32)

    def fp(store: ShardStore = source, metric: str = "linear", bias: np.ndarray | None = None) -> str:
        return CentroidPredictionStream(store, "feat", False, eye, metric, (3, 4), CPU, bias=bias).fingerprint

    prints = [fp(), fp(bias=np.zeros(3, np.float32)), fp(bias=np.array([0, 1, 0], np.float32)), fp(metric="cosine"),
              fp(other)]
    assert len(set(prints)) == len(prints)
    assert fp(bias=np.ones(3, np.float32)) == fp(bias=np.ones(3, np.float32))


# ------------------------------------------------------------------------------------------------- confusion_of
def test_confusion_of_equals_a_hand_built_confusion(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=(5, 4, 6)).astype(np.uint8)
    labels[0, 0, :] = 255  # unlabelled pixels are not counted
    labels[3, :, 0] = 255
    preds = rng.integers(0, 4, size=(5, 4, 6)).astype(np.uint8)
    label_store = make_store(tmp_path / "labels", shard_size=2, label=labels)
    pred_store = make_store(tmp_path / "preds", shard_size=2, pred=preds)

    hist = confusion_of(pred_store, label_store, num_classes=3, num_clusters=4)

    expected = np.zeros((3, 4), np.int64)
    for gt, pred in zip(labels.ravel(), preds.ravel(), strict=True):
        if gt != 255:
            expected[gt, pred] += 1
    np.testing.assert_array_equal(hist, expected)
    assert hist.sum() == np.count_nonzero(labels != 255) == 5 * 24 - 6 - 4


@pytest.mark.parametrize("pred_count, pred_prefix", [(4, "img"), (5, "other")])
def test_confusion_of_different_ids_names_both_stores(tmp_path: Path, pred_count: int, pred_prefix: str) -> None:
    label_store = make_store(tmp_path / "labels", label=np.zeros((5, 2, 2), np.uint8))
    pred_store = make_store(tmp_path / "preds", prefix=pred_prefix, pred=np.zeros((pred_count, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="different images") as info:
        confusion_of(pred_store, label_store, num_classes=2, num_clusters=2)
    assert str(tmp_path / "labels") in str(info.value)
    assert str(tmp_path / "preds") in str(info.value)
    assert "img004" in str(info.value)  # an example of an image without prediction


# ------------------------------------------------------------------------------------------------ method_scores
NAMES = ["sky", "road", "car"]
PERMUTED = np.array([[0, 0, 40], [10, 0, 0], [0, 25, 0]])  # class k always predicted as cluster perm[k]
OVER = np.array([[10, 0, 0, 5, 0], [0, 20, 0, 0, 0], [0, 0, 30, 0, 0]])  # class 0 split over clusters 0 and 3


def test_perfect_prediction_up_to_permutation_scores_100() -> None:
    record = method_scores("m", PERMUTED, NAMES)
    assert record["acc"] == pytest.approx(100.0)
    assert record["miou"] == pytest.approx(100.0)
    assert record["iou"] == pytest.approx([100.0, 100.0, 100.0])
    assert record["mapping"] == [1, 2, 0]  # cluster -> class
    assert record["num_clusters"] == 3
    assert record["method"] == "m" and record["class_names"] == NAMES
    assert record["confusion"] == PERMUTED.tolist()
    assert not {"majority_acc", "majority_miou", "miou_things", "miou_stuff"} & set(record)
    np.testing.assert_array_equal(matched_confusion(record), np.diag([40, 10, 25]))
    json.dumps(record, allow_nan=False)  # JSON-able as it is


def test_over_clustering_adds_majority_scores() -> None:
    record = method_scores("over", OVER, NAMES)
    # Hungarian uses clusters 0, 1, 2; the 5 pixels of cluster 3 are wrong
    assert record["num_clusters"] == 5
    assert record["mapping"] == [0, 1, 2, -1, -1]
    assert record["acc"] == pytest.approx(100 * 60 / 65)
    assert record["iou"] == pytest.approx([100 * 10 / 15, 100.0, 100.0])
    assert record["miou"] == pytest.approx((100 * 10 / 15 + 200) / 3)
    # majority sends cluster 3 to class 0: everything right
    assert record["majority_acc"] == pytest.approx(100.0)
    assert record["majority_miou"] == pytest.approx(100.0)


def test_things_and_stuff_subsets_when_given() -> None:
    record = method_scores("over", OVER, NAMES, things=[2], stuff=[0, 1])
    assert record["miou_things"] == pytest.approx(100.0)
    assert record["miou_stuff"] == pytest.approx((100 * 10 / 15 + 100) / 2)


def test_subsets_need_both_things_and_stuff() -> None:
    """Things and stuff are reported together or not at all (a data set defines both or neither)."""
    assert "miou_things" not in method_scores("m", PERMUTED, NAMES, things=[2])
    assert "miou_stuff" not in method_scores("m", PERMUTED, NAMES, stuff=[0, 1])


def test_class_absent_and_never_predicted_has_no_iou() -> None:
    hist = np.array([[5, 0, 0], [0, 7, 0], [0, 0, 0]])
    record = method_scores("m", hist, NAMES)
    assert record["iou"] == [100.0, 100.0, None]
    assert record["miou"] == pytest.approx(100.0)
    json.dumps(record, allow_nan=False)


# --------------------------------------------------------------------------------------------- comparison_table
def test_comparison_table_rows_columns_and_rounding() -> None:
    records = [method_scores("over", OVER, NAMES), method_scores("perm", PERMUTED, NAMES)]
    table = comparison_table(records)
    assert list(table.columns) == ["method", "num_clusters", "acc", "miou", "majority_acc", "majority_miou"]
    assert list(table["method"]) == ["over", "perm"]
    assert list(table["num_clusters"]) == [5, 3]
    assert table.loc[0, "acc"] == 92.31  # 100 * 60 / 65 = 92.3077
    assert table.loc[0, "miou"] == 88.89  # (66.667 + 200) / 3
    assert table.loc[0, "majority_acc"] == 100.0
    assert math.isnan(table.loc[1, "majority_acc"])  # the perm record has no majority score


def test_comparison_table_drops_columns_no_record_has() -> None:
    table = comparison_table([method_scores("a", PERMUTED, NAMES), method_scores("b", PERMUTED[::-1], NAMES)])
    assert list(table.columns) == ["method", "num_clusters", "acc", "miou"]
    with_subsets = comparison_table([method_scores("a", OVER, NAMES, things=[2], stuff=[0, 1])])
    assert list(with_subsets.columns) == ["method", "num_clusters", "acc", "miou", "miou_things", "miou_stuff",
                                          "majority_acc", "majority_miou"]
    assert with_subsets.loc[0, "miou_stuff"] == 83.33


# ---------------------------------------------------------------------------------------------------- metrics_of
def test_metrics_of_key_names_and_values() -> None:
    absent = method_scores("kmeans", np.array([[5, 1, 0], [0, 7, 0], [0, 0, 0]]), NAMES)  # car: IoU NaN
    metrics = metrics_of([absent, method_scores("rgb_kmeans", PERMUTED, NAMES)])
    assert set(metrics) == {
        "eval/kmeans/acc", "eval/kmeans/miou", "eval/kmeans/iou/sky", "eval/kmeans/iou/road",
        "eval/rgb_kmeans/acc", "eval/rgb_kmeans/miou",
        "eval/rgb_kmeans/iou/sky", "eval/rgb_kmeans/iou/road", "eval/rgb_kmeans/iou/car",
    }
    assert metrics["eval/kmeans/acc"] == pytest.approx(100 * 12 / 13)
    assert metrics["eval/kmeans/iou/road"] == pytest.approx(100 * 7 / 8)
    assert metrics["eval/rgb_kmeans/miou"] == pytest.approx(100.0)
    assert all(type(v) is float for v in metrics.values())


def test_metrics_of_includes_majority_and_subsets_when_present() -> None:
    metrics = metrics_of([method_scores("over", OVER, NAMES, things=[2], stuff=[0, 1])])
    assert {k for k in metrics if "/iou/" not in k} == {
        f"eval/over/{key}" for key in ("acc", "miou", "miou_things", "miou_stuff", "majority_acc", "majority_miou")}


def test_metrics_of_refuses_a_record_whose_names_and_ious_differ_in_length() -> None:
    """A record with 2 class names for 3 IoUs is corrupt: no metric is logged under a shifted name."""
    record = {**method_scores("m", PERMUTED, NAMES), "class_names": NAMES[:2]}
    with pytest.raises(ValueError, match="zip"):
        metrics_of([record])


def test_metrics_of_skips_nan_subset_scores() -> None:
    # the only thing class is absent and never predicted: its subset mIoU is NaN and not logged
    record = method_scores("m", np.array([[5, 0, 0], [0, 7, 0], [0, 0, 0]]), NAMES, things=[2], stuff=[0, 1])
    assert math.isnan(record["miou_things"])
    metrics = metrics_of([record])
    assert "eval/m/miou_things" not in metrics
    assert metrics["eval/m/miou_stuff"] == pytest.approx(100.0)


# ------------------------------------------------------------------------------------------- mapped_predictions
@pytest.mark.parametrize("count, expected_rows", [(2, 2), (3, 3), (10, 3)])
def test_mapped_predictions_maps_clusters_and_unmatched_to_ignore(tmp_path: Path, count: int,
                                                                   expected_rows: int) -> None:
    preds = np.array([
        [[0, 1], [3, 4]],
        [[2, 2], [1, 0]],
        [[4, 3], [2, 1]],
    ], dtype=np.uint8)
    store = make_store(tmp_path / "preds", shard_size=2, pred=preds)
    record = {"mapping": [2, 0, 1, -1, -1]}
    got = mapped_predictions(store, record, count, ignore_index=255)
    lut = np.array([2, 0, 1, 255, 255])
    assert got.shape == (expected_rows, 2, 2)
    np.testing.assert_array_equal(got, lut[preds[:expected_rows]])
    assert re.fullmatch(r"int\d+", str(got.dtype))
