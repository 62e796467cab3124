"""What a store is made from: its identity covers the content of its source files (size and mtime), and stores that
must belong together (train + val of one ingestion, features + their images, a model + the val store it predicts)
are checked before use."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from unseg.core.data.prepare import PreparedImageStream, resize_crop
from unseg.core.data.sources import BadFileError, DatasetConfig, build_index, load_image
from unseg.core.store import (
    INGESTION,
    FieldSpec,
    Shard,
    ShardStore,
    StoreError,
    check_made_from,
    check_same_ingestion,
    write_store,
)
from unseg.pipelines.evaluation.nodes import predict_with_centroids, score_predictions
from unseg.pipelines.features.nodes import extract_features
from unseg.pipelines.ingestion.nodes import build_image_index, prepare_images
from unseg.pipelines.primaps.nodes import predict_val

K, SIDE = 4, 16


def write_image(path: Path, seed: int, size: tuple[int, int] = (20, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def write_label(path: Path, seed: int, size: tuple[int, int] = (20, 16), high: int = K) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, high, (size[1], size[0]), dtype=np.uint8)).save(path)


def write_tree(root: Path, num_train: int, num_val: int, seed: int = 0) -> None:
    """A `folder` data set: images/{split}/<id>.png and labels/{split}/<id>.png, random content."""
    for split, count in (("train", num_train), ("val", num_val)):
        for i in range(count):
            write_image(root / "images" / split / f"{split[0]}{i}.png", seed * 100 + i)
            write_label(root / "labels" / split / f"{split[0]}{i}.png", seed * 100 + i)


def dataset_params(root: Path) -> dict[str, Any]:
    return {"source": "folder", "root": str(root), "num_classes": K, "resize": SIDE, "crop": SIDE,
            "on_bad_file": "raise"}


def train_stream(root: Path) -> PreparedImageStream:
    config = DatasetConfig(source="folder", root=str(root), num_classes=K, resize=SIDE, crop=SIDE)
    table = build_index(config).table
    return PreparedImageStream(table[table["split"] == "train"].reset_index(drop=True), config, shard_size=2)


# ------------------------------------------------------------------------------ identity covers file contents
def test_replaced_source_file_is_not_resumed_from(tmp_path: Path) -> None:
    """A run fails on a truncated image; the user fixes it and replaces another image under the same name: the rerun
    must hold the new pixels, not resume the shard made from the old file."""
    raw = tmp_path / "raw"
    write_tree(raw, num_train=6, num_val=1)
    broken = raw / "images" / "train" / "t4.png"
    broken.write_bytes(broken.read_bytes()[:60])  # header readable (the index keeps it), pixels not
    with pytest.raises(BadFileError):
        write_store(train_stream(raw), tmp_path / "prep", progress=False)  # shards 0 and 1 were finished

    write_image(broken, 4)  # fixed
    replaced = raw / "images" / "train" / "t0.png"
    before = os.stat(replaced)
    write_image(replaced, 999)  # new content under the same name (same width and height)
    os.utime(replaced, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))  # however coarse the clock
    write_store(train_stream(raw), tmp_path / "prep", progress=False)

    store = ShardStore(tmp_path / "prep")
    assert store.ids == [f"t{i}" for i in range(6)]
    np.testing.assert_array_equal(store.item("t0")["image"],
                                  resize_crop(load_image(replaced), SIDE, SIDE, nearest=False))


def test_fingerprint_follows_size_and_mtime_not_only_paths(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_tree(raw, num_train=3, num_val=1)
    first = train_stream(raw)
    assert train_stream(raw).fingerprint == first.fingerprint  # stable while nothing changes: resumes work
    label = raw / "labels" / "train" / "t1.png"
    info = os.stat(label)
    os.utime(label, ns=(info.st_atime_ns, info.st_mtime_ns + 1))  # touched: same bytes, another mtime
    assert train_stream(raw).fingerprint != first.fingerprint
    # a changed val file changes the ingestion both splits record, not the train store's own fingerprint (its
    # finished shards stay reusable)
    params = dataset_params(raw)
    index, _ = build_image_index(params, 0)
    train, val = prepare_images(index, params, 0, 2, 0)
    assert train.attrs[INGESTION] == val.attrs[INGESTION]
    write_image(raw / "images" / "val" / "v0.png", 7, size=(24, 16))
    write_label(raw / "labels" / "val" / "v0.png", 7, size=(24, 16))
    index, _ = build_image_index(params, 0)
    train_again, _ = prepare_images(index, params, 0, 2, 0)
    assert train_again.fingerprint == train.fingerprint
    assert train_again.attrs[INGESTION] != train.attrs[INGESTION]


# ------------------------------------------------------------------------------------ stores that belong together
def ingest(raw: Path, data: Path) -> tuple[Path, Path]:
    """The ingestion nodes, saved as Kedro would: the index, then the train store, then the val store."""
    params = dataset_params(raw)
    index, _ = build_image_index(params, 0)
    train, val = prepare_images(index, params, 0, 2, 0)
    write_store(train, data / "prm_train_images", progress=False)
    write_store(val, data / "prm_val_images", progress=False)
    return data / "prm_train_images", data / "prm_val_images"


def test_features_refuse_train_and_val_of_two_data_sets(tmp_path: Path) -> None:
    """A ingests; B fails on a val label after its train store was saved: the features stage must not go on with B's
    train images and A's val images."""
    data = tmp_path / "data"
    write_tree(tmp_path / "a", 4, 2)
    train_a, val_a = ingest(tmp_path / "a", data)
    a_train, a_val = ShardStore(train_a), ShardStore(val_a)
    assert a_train.attrs[INGESTION] == a_val.attrs[INGESTION]  # one ingestion, one identity for both splits
    check_same_ingestion(train=a_train, val=a_val)

    write_tree(tmp_path / "b", 6, 3, seed=1)
    write_label(tmp_path / "b" / "labels" / "val" / "v1.png", 1, high=K + 3)  # out of range: the val save fails
    with pytest.raises(BadFileError):
        ingest(tmp_path / "b", data)
    train, val = ShardStore(data / "prm_train_images"), ShardStore(data / "prm_val_images")
    assert (len(train), len(val)) == (6, 2)  # B's train store, A's val store: what the next run loads

    features = {"backbone": "efficientnet_lite0", "weights": None, "pretrained": False, "batch_size": 2}
    with pytest.raises(StoreError) as info:
        extract_features(train, val, features, "cpu", 0)
    message = str(info.value)
    for part in ("prm_train_images", "prm_val_images", str(train.root), str(val.root), "6 items", "2 items",
                 train.attrs[INGESTION], val.attrs[INGESTION], "one ingestion"):
        assert part in message


class ArrayStreamOf:
    """A stream of given arrays (one shard), attrs and fingerprint; `upstream` stores become its attributes."""

    def __init__(self, arrays: dict[str, np.ndarray], attrs: dict[str, Any], fp: str,
                 ids: Sequence[str] | None = None, **upstream: ShardStore) -> None:
        self.arrays = arrays
        self.ids = list(ids or [f"v{i}" for i in range(len(next(iter(arrays.values()))))])
        self.fields = {k: FieldSpec(str(v.dtype), tuple(v.shape[1:])) for k, v in arrays.items()}
        self.attrs, self.fingerprint, self.num_shards = attrs, fp, 1
        self.__dict__.update(upstream)

    def iter_shards(self, todo: Sequence[int]) -> Iterator[Shard]:
        for index in todo:
            yield Shard(index, self.ids, self.arrays)


def store_of(root: Path, stream: ArrayStreamOf) -> ShardStore:
    write_store(stream, root, progress=False)
    return ShardStore(root)


def val_images(root: Path, ingestion: str) -> ShardStore:
    rng = np.random.default_rng(0)
    arrays = {"image": rng.integers(0, 256, (3, SIDE, SIDE, 3), dtype=np.uint8),
              "label": rng.integers(0, K, (3, SIDE, SIDE), dtype=np.uint8)}
    attrs = {"split": "val", INGESTION: ingestion, "class_names": list("abcd"), "thing_classes": [],
             "stuff_classes": []}
    return store_of(root, ArrayStreamOf(arrays, attrs, f"images-{ingestion}"))


def val_features(root: Path, images: ShardStore) -> ShardStore:
    feats = np.random.default_rng(1).standard_normal((3, 8, 2, 2)).astype(np.float16)
    attrs = {"backbone": "b", "images": images.fingerprint, "split": "val"}
    return store_of(root, ArrayStreamOf({"feat": feats}, attrs, f"feat-{images.fingerprint}", images=images))


def test_derived_stores_inherit_the_ingestion_and_refuse_mixed_inputs(tmp_path: Path) -> None:
    images_a, images_b = val_images(tmp_path / "a", "ing-a"), val_images(tmp_path / "b", "ing-b")
    feats = val_features(tmp_path / "feat", images_a)
    assert feats.attrs[INGESTION] == "ing-a"
    check_made_from("feat_val", feats, "prm_val_images", images_a)
    with pytest.raises(StoreError, match=r"feat_val .* was made from images with fingerprint images-ing-a"):
        check_made_from("feat_val", feats, "prm_val_images", images_b)
    # a stream reading stores of two ingestions is refused before it writes anything
    mixed = ArrayStreamOf({"x": np.zeros((3, 2), np.uint8)}, {}, "mixed", features=feats, images=images_b)
    with pytest.raises(StoreError, match=r"do not come from one ingestion: features .*ing-a.*; images .*ing-b"):
        write_store(mixed, tmp_path / "mixed", progress=False)
    assert not (tmp_path / "mixed").exists()


def test_evaluation_refuses_a_model_and_leaves_out_predictions_of_another_ingestion(tmp_path: Path) -> None:
    images_a, images_b = val_images(tmp_path / "a", "ing-a"), val_images(tmp_path / "b", "ing-b")
    dataset = {"crop": SIDE, "num_classes": K}
    model = {"input": "image", "metric": "euclidean", "centroids": np.eye(K, 3).tolist(), INGESTION: "ing-a"}
    with pytest.raises(StoreError, match=rf"fitted on the train split of ingestion ing-a, but {tmp_path / 'b'}"):
        predict_with_centroids(model, images_b, dataset, "cpu", 0)
    predictions = predict_with_centroids(model, images_a, dataset, "cpu", 0)  # the same ingestion: fine
    stored = store_of(tmp_path / "pred", predictions)
    assert stored.attrs[INGESTION] == "ing-a"
    # same ids and crop, other ingestion: left out of the table (with why), not scored against the wrong labels
    record = score_predictions(stored, images_b, dataset, "kmeans")
    assert record["method"] == "kmeans" and "ingestion ing-a" in record["skipped"]
    assert "skipped" not in score_predictions(stored, images_a, dataset, "kmeans")


def test_primaps_predictions_refuse_features_of_other_images(tmp_path: Path) -> None:
    images_a, images_b = val_images(tmp_path / "a", "ing-a"), val_images(tmp_path / "b", "ing-b")
    feats = val_features(tmp_path / "feat", images_a)
    with pytest.raises(StoreError, match="do not come from one ingestion"):
        predict_val({"method": "primaps_em"}, feats, images_b, False, {}, {"features": "frozen", "init": "pca"},
                    {}, "cpu", 0)
