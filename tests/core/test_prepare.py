"""Tests of image preparation: resize + centre crop, and the PreparedImageStream written into a store."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from unseg.core.data.prepare import PreparedImageStream, decode_workers, resize_crop
from unseg.core.data.sources import BadFileError, DatasetConfig, build_index, load_image, load_label
from unseg.core.store import FieldSpec, ShardStore, write_store

K = 4


@pytest.fixture
def new_children():
    """The child processes started since the test began (pools of earlier tests, e.g. the CRF's, may live on)."""
    before = {child.pid for child in multiprocessing.active_children()}
    return lambda: [child for child in multiprocessing.active_children() if child.pid not in before]


def coords(height: int, width: int, dtype=np.int64) -> np.ndarray:
    """label[y, x] = y * width + x."""
    return (np.arange(height)[:, None] * width + np.arange(width)[None, :]).astype(dtype)


def coord_image(height: int, width: int) -> np.ndarray:
    """RGB image with R = y, G = x, B = 200."""
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = np.arange(height)[:, None]
    image[..., 1] = np.arange(width)[None, :]
    image[..., 2] = 200
    return image


# ------------------------------------------------------------------------------------------------- resize_crop
def test_resize_crop_nearest_downscale_known_answer() -> None:
    # 4 x 8, shorter side 4 -> 2: resized to 2 x 4, nearest samples source rows 1, 3 and columns 1, 3, 5, 7;
    # the centre 2 x 2 crop starts at column (4 - 2) // 2 = 1, i.e. source columns 3, 5.
    out = resize_crop(coords(4, 8), resize=2, crop=2, nearest=True)
    np.testing.assert_array_equal(out, [[1 * 8 + 3, 1 * 8 + 5], [3 * 8 + 3, 3 * 8 + 5]])
    # portrait 8 x 4: resized to 4 x 2 (source rows 1, 3, 5, 7), crop starts at row 1 -> source rows 3, 5
    out = resize_crop(coords(8, 4), resize=2, crop=2, nearest=True)
    np.testing.assert_array_equal(out, [[3 * 4 + 1, 3 * 4 + 3], [5 * 4 + 1, 5 * 4 + 3]])


@pytest.mark.parametrize(("height", "width", "crop", "top", "left"), [
    (6, 10, 4, 1, 3),   # landscape: shorter side already at `resize`, so only the centre crop acts
    (6, 11, 4, 1, 3),   # odd margin: (11 - 4) // 2 = 3
    (10, 6, 4, 3, 1),   # portrait
    (7, 7, 3, 2, 2),    # square, odd
    (6, 10, 6, 0, 2),   # crop = resize
])
@pytest.mark.parametrize("nearest", [True, False])
def test_resize_crop_centre_crop_offsets(height: int, width: int, crop: int, top: int, left: int,
                                         nearest: bool) -> None:
    resize = min(height, width)
    image = coord_image(height, width)
    out = resize_crop(image, resize, crop, nearest=nearest)
    assert out.shape == (crop, crop, 3) and out.dtype == np.uint8
    # the surviving pixels are exactly rows top..top+crop-1 and columns left..left+crop-1
    np.testing.assert_array_equal(out[..., 0], np.repeat(np.arange(top, top + crop)[:, None], crop, 1))
    np.testing.assert_array_equal(out[..., 1], np.repeat(np.arange(left, left + crop)[None, :], crop, 0))
    np.testing.assert_array_equal(out, image[top:top + crop, left:left + crop])
    label = coords(height, width, np.int32)
    np.testing.assert_array_equal(resize_crop(label, resize, crop, nearest=True),
                                  label[top:top + crop, left:left + crop])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
@pytest.mark.parametrize(("shape", "resize", "crop"), [((5, 7), 16, 12), ((20, 9), 6, 6), ((9, 30), 12, 8)])
def test_resize_crop_labels_keep_their_values(dtype, shape: tuple[int, int], resize: int, crop: int) -> None:
    label = np.random.default_rng(0).choice(np.array([0, 3, 255], dtype=dtype), shape)
    out = resize_crop(label, resize, crop, nearest=True)
    assert out.dtype == dtype
    assert out.shape == (crop, crop)
    assert set(np.unique(out)) <= {0, 3, 255}


@pytest.mark.parametrize(("shape", "resize", "crop"), [((5, 7), 16, 12), ((20, 9), 6, 6), ((40, 64), 32, 32)])
def test_resize_crop_images(shape: tuple[int, int], resize: int, crop: int) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    out = resize_crop(image, resize, crop, nearest=False)
    assert out.dtype == np.uint8 and out.shape == (crop, crop, 3)
    # bilinear makes no values outside the input's range, and a constant image stays constant
    assert out.min() >= image.min() and out.max() <= image.max()
    flat = np.full((*shape, 3), (10, 120, 250), np.uint8)
    np.testing.assert_array_equal(resize_crop(flat, resize, crop, nearest=False),
                                  np.full((crop, crop, 3), (10, 120, 250), np.uint8))


def test_resize_crop_bilinear_upscale_by_two_interpolates() -> None:
    # a horizontal ramp upscaled x2 and cropped to the full width stays monotone in x and constant in y
    ramp = np.repeat(np.repeat((np.arange(8) * 30).astype(np.uint8)[None, :, None], 4, 0), 3, 2)
    out = resize_crop(ramp, resize=8, crop=8, nearest=False)  # 4 x 8 -> 8 x 16, crop columns 4..11
    assert out.shape == (8, 8, 3)
    assert np.all(out == out[:1])
    assert np.all(np.diff(out[0, :, 0].astype(int)) >= 0)
    assert len(np.unique(out[0, :, 0])) > 4  # new, in-between values: interpolated, not nearest


# ------------------------------------------------------------------------------------------ PreparedImageStream
def write_tree(root: Path, sizes: dict[str, tuple[int, int]], val: dict[str, tuple[int, int]] | None = None,
               train_labels: bool = True) -> None:
    val = val or {"v0": (20, 18)}
    for split, images in (("train", sizes), ("val", val)):
        for n, (stem, (width, height)) in enumerate(images.items()):
            rng = np.random.default_rng(n)
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
                root / "images" / split / f"{stem}.png")
            if split == "val" or train_labels:
                (root / "labels" / split).mkdir(parents=True, exist_ok=True)
                label = rng.choice(np.array([0, 1, 2, 3, 255], np.uint8), (height, width))
                Image.fromarray(label).save(root / "labels" / split / f"{stem}.png")


TRAIN = {"t0": (20, 16), "t1": (16, 16), "t2": (30, 17), "t3": (17, 25), "t4": (24, 24)}


def make_config(root: Path, on_bad_file: str = "raise") -> DatasetConfig:
    return DatasetConfig(source="folder", root=str(root), num_classes=K, resize=16, crop=16, on_bad_file=on_bad_file)


def split_table(cfg: DatasetConfig, role: str = "train") -> pd.DataFrame:
    table = build_index(cfg).table
    return table[table["split"] == role].reset_index(drop=True)


@pytest.mark.parametrize("train_labels", [True, False])
def test_prepared_stream_into_store(tmp_path: Path, train_labels: bool) -> None:
    write_tree(tmp_path / "data", TRAIN, train_labels=train_labels)
    cfg = make_config(tmp_path / "data")
    table = split_table(cfg)
    stream = PreparedImageStream(table, cfg, shard_size=2)
    assert stream.num_shards == 3
    write_store(stream, tmp_path / "prep", progress=False)
    store = ShardStore(tmp_path / "prep")

    expected_fields = {"image": FieldSpec("uint8", (16, 16, 3))}
    if train_labels:
        expected_fields["label"] = FieldSpec("uint8", (16, 16))
    assert store.fields == expected_fields
    assert store.ids == ["t0", "t1", "t2", "t3", "t4"]
    assert store.shard_counts == [2, 2, 1]
    assert store.skipped == []
    assert store.attrs["split"] == "train" and store.attrs["crop"] == 16 and store.attrs["resize"] == 16
    assert store.attrs["class_names"] == ["class_0", "class_1", "class_2", "class_3"]
    for row in table.itertuples():
        item = store.item(row.image_id)
        assert item["image"].shape == (16, 16, 3) and item["image"].dtype == np.uint8
        np.testing.assert_array_equal(item["image"], resize_crop(load_image(row.image_path), 16, 16, nearest=False))
        if train_labels:
            assert item["label"].dtype == np.uint8
            np.testing.assert_array_equal(item["label"],
                                          resize_crop(load_label(row.label_path, cfg), 16, 16, nearest=True))
            assert set(np.unique(item["label"])) <= {0, 1, 2, 3, 255}


def test_prepared_stream_fingerprint(tmp_path: Path) -> None:
    write_tree(tmp_path / "data", TRAIN)
    cfg = make_config(tmp_path / "data")
    table = split_table(cfg)
    a = PreparedImageStream(table, cfg, shard_size=2).fingerprint
    assert a == PreparedImageStream(table, cfg, shard_size=2).fingerprint
    assert a != PreparedImageStream(table, cfg, shard_size=3).fingerprint
    assert a != PreparedImageStream(table.iloc[:4], cfg, shard_size=2).fingerprint
    other = DatasetConfig(source="folder", root=cfg.root, num_classes=K, resize=24, crop=16)
    assert a != PreparedImageStream(table, other, shard_size=2).fingerprint


def test_prepared_stream_needs_images(tmp_path: Path) -> None:
    write_tree(tmp_path / "data", TRAIN)
    cfg = make_config(tmp_path / "data")
    with pytest.raises(ValueError, match="empty"):
        PreparedImageStream(split_table(cfg).iloc[:0], cfg)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_image(root: Path) -> Path:
    """t2's image: its header still reads (the index accepts it), its pixels do not."""
    path = root / "images" / "train" / "t2.png"
    truncate(path)
    return path


def corrupt_label(root: Path) -> Path:
    path = root / "labels" / "train" / "t2.png"
    truncate(path)
    return path


def label_out_of_range(root: Path) -> Path:
    path = root / "labels" / "train" / "t2.png"
    label = np.zeros((17, 30), np.uint8)
    label[3, 4] = 7
    Image.fromarray(label).save(path)
    return path


@pytest.mark.parametrize(("breaker", "problem"), [
    (corrupt_image, "corrupt or unreadable image"),
    (corrupt_label, "corrupt or unreadable label"),
    (label_out_of_range, "label values [7] are outside [0, 4)"),
], ids=["corrupt_image", "corrupt_label", "label_out_of_range"])
def test_bad_file_at_decode_time(tmp_path: Path, breaker, problem: str) -> None:
    root = tmp_path / "data"
    write_tree(root, TRAIN)
    path = breaker(root)
    # the index reads headers only: the file is still listed
    assert "t2" in split_table(make_config(root))["image_id"].tolist()

    cfg = make_config(root, on_bad_file="raise")
    with pytest.raises(BadFileError) as info:
        write_store(PreparedImageStream(split_table(cfg), cfg, shard_size=2), tmp_path / "prep", progress=False)
    assert info.value.path == str(path)
    assert str(path) in str(info.value) and problem in str(info.value)
    assert not (tmp_path / "prep").exists()

    cfg = make_config(root, on_bad_file="skip")
    write_store(PreparedImageStream(split_table(cfg), cfg, shard_size=2), tmp_path / "prep", progress=False)
    store = ShardStore(tmp_path / "prep")
    assert store.ids == ["t0", "t1", "t3", "t4"]
    assert store.shard_counts == [2, 1, 1]
    assert len(store.skipped) == 1
    [entry] = store.skipped
    assert entry["id"] == "t2" and entry["path"] == str(path) and problem in entry["problem"]
    np.testing.assert_array_equal(store.item("t3")["image"],
                                  resize_crop(load_image(root / "images" / "train" / "t3.png"), 16, 16, False))


def test_whole_shard_skipped(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_tree(root, TRAIN)
    truncate(root / "images" / "train" / "t2.png")
    truncate(root / "images" / "train" / "t3.png")
    cfg = make_config(root, on_bad_file="skip")
    write_store(PreparedImageStream(split_table(cfg), cfg, shard_size=2), tmp_path / "prep", progress=False)
    store = ShardStore(tmp_path / "prep")
    assert store.ids == ["t0", "t1", "t4"] and store.shard_counts == [2, 0, 1]
    assert [e["id"] for e in store.skipped] == ["t2", "t3"]
    assert store.shard(1)["image"].shape == (0, 16, 16, 3)



# ------------------------------------------------------------------------------------------------- decode workers
def shards(stream: PreparedImageStream, todo: list[int] | None = None) -> list[tuple]:
    """Every shard as (index, ids, {field: (dtype, shape, bytes)}, skipped): equal means byte for byte."""
    todo = list(range(stream.num_shards)) if todo is None else todo
    return [(s.index, s.ids, {k: (str(a.dtype), a.shape, a.tobytes()) for k, a in s.arrays.items()}, s.skipped)
            for s in stream.iter_shards(todo)]


def break_images(root: Path, stems: tuple[str, ...]) -> list[str]:
    """Truncates these train images (headers still read); their paths."""
    paths = [root / "images" / "train" / f"{stem}.png" for stem in stems]
    for path in paths:
        truncate(path)
    return [str(path) for path in paths]


@pytest.mark.parametrize(("broken", "todo", "order"), [
    ((), None, [0, 1, 2]),                  # clean
    (("t2",), None, [0, 1, 2]),             # a bad file skipped: shard 1 one short
    (("t0", "t1"), None, [0, 1, 2]),        # shard 0 empty: held back until shard 1 holds an image
    (("t2", "t3"), [2, 1, 0], [2, 1, 0]),   # shard 1 empty, todo out of order (shard 2 holds an image first)
    (("t0", "t1"), [0, 2], [0, 2]),         # a resumed write: shard 0 held until shard 2
])
def test_workers_make_the_same_shards(new_children, tmp_path: Path, broken: tuple[str, ...], todo: list[int] | None,
                                      order: list[int], caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "data"
    write_tree(root, TRAIN)
    paths = break_images(root, broken)
    cfg = make_config(root, on_bad_file="skip")
    table = split_table(cfg)
    expected = shards(PreparedImageStream(table, cfg, shard_size=2), todo)
    assert [shard[0] for shard in expected] == order
    assert sorted(entry["path"] for shard in expected for entry in shard[3]) == sorted(
        p for p, stem in zip(paths, broken, strict=True) if todo is None or int(stem[1]) // 2 in todo)
    caplog.clear()
    assert shards(PreparedImageStream(table, cfg, shard_size=2, num_workers=2), todo) == expected
    # the workers' warnings reach this process's loggers, under their own names
    skipping = [r.getMessage() for r in caplog.records if r.name == "unseg.core.data.sources"]
    assert sorted(m.split(": ")[0] for m in skipping) == sorted(f"skipping {entry['path']}" for shard in expected
                                                                for entry in shard[3])
    assert new_children() == []


@pytest.mark.parametrize("num_workers", [0, 1, 2])
def test_workers_raise_the_bad_file(new_children, tmp_path: Path, num_workers: int) -> None:
    """on_bad_file=raise: the shards before the bad one come out, then the same error naming the file."""
    root = tmp_path / "data"
    write_tree(root, TRAIN)
    [path] = break_images(root, ("t2",))
    cfg = make_config(root, on_bad_file="raise")
    stream = PreparedImageStream(split_table(cfg), cfg, shard_size=1, num_workers=num_workers)
    done = []
    with pytest.raises(BadFileError) as info:
        done.extend(shard.ids for shard in stream.iter_shards(range(5)))
    assert done == [["t0"], ["t1"]]
    assert info.value.path == path and "corrupt or unreadable image" in info.value.problem
    assert str(info.value).startswith(f"{path}: ")
    assert new_children() == []


@pytest.mark.parametrize("num_workers", [0, 2])
def test_workers_every_image_bad_is_the_same_error(new_children, tmp_path: Path, num_workers: int) -> None:
    root = tmp_path / "data"
    write_tree(root, TRAIN)
    break_images(root, tuple(TRAIN))
    cfg = make_config(root, on_bad_file="skip")
    stream = PreparedImageStream(split_table(cfg), cfg, shard_size=2, num_workers=num_workers)
    with pytest.raises(BadFileError, match="empty train split: all 5 images were skipped as bad") as info:
        list(stream.iter_shards(range(3)))
    assert info.value.path == str(root / "images" / "train")
    assert new_children() == []


def test_workers_are_not_part_of_the_identity(tmp_path: Path) -> None:
    write_tree(tmp_path / "data", TRAIN)
    cfg = make_config(tmp_path / "data")
    table = split_table(cfg)
    alone, pooled = (PreparedImageStream(table, cfg, shard_size=2, num_workers=n) for n in (0, 3))
    assert alone.fingerprint == pooled.fingerprint
    assert alone.attrs == pooled.attrs and alone.fields == pooled.fields


def test_closing_the_stream_early_stops_the_workers(new_children, tmp_path: Path) -> None:
    """A consumer that stops (write_store killed, an error downstream): closing the generator shuts the pool down."""
    write_tree(tmp_path / "data", TRAIN)
    cfg = make_config(tmp_path / "data")
    stream = PreparedImageStream(split_table(cfg), cfg, shard_size=1, num_workers=2)
    produced = stream.iter_shards(range(5))
    assert next(produced).ids == ["t0"]
    assert len(new_children()) == 2
    produced.close()
    assert new_children() == []
    # a consumer that raises: the loop's generator is closed with it
    with pytest.raises(RuntimeError, match="downstream"), contextlib.closing(stream.iter_shards(range(5))) as again:
        for _ in again:
            raise RuntimeError("downstream")
    assert new_children() == []


def test_a_daemonic_process_decodes_itself(new_children, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """A daemonic process may not have children: the stream says so and decodes in this process."""
    write_tree(tmp_path / "data", TRAIN)
    cfg = make_config(tmp_path / "data")
    table = split_table(cfg)
    expected = shards(PreparedImageStream(table, cfg, shard_size=2))
    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True, raising=False)
    produced = PreparedImageStream(table, cfg, shard_size=2, num_workers=2).iter_shards(range(3))
    first = next(produced)
    assert new_children() == []
    assert shards(PreparedImageStream(table, cfg, shard_size=2, num_workers=2)) == expected
    assert first.ids == expected[0][1]
    assert "decoding in this process: a daemonic process" in caplog.text


@pytest.mark.parametrize("value", [-1, 1.5, True, "all", None])
def test_decode_workers_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="num_workers must be an integer >= 0 .* or 'auto'"):
        decode_workers(value)  # type: ignore[arg-type]


def test_decode_workers_auto_and_counts() -> None:
    assert decode_workers(0) == 0 and decode_workers(3) == 3
    assert 1 <= decode_workers("auto") <= min(8, os.cpu_count() or 1)
