"""Folder inputs that decode to something other than they look: 16-bit PNGs, EXIF orientation, alpha, an empty split
after skipping bad files, and image ids shared by two splits (each split numbered from 1)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unseg.core.data.prepare import PreparedImageStream, resize_crop
from unseg.core.data.sources import BadFileError, DatasetConfig, build_index, load_image, load_label
from unseg.core.store import ShardStore, write_store

K = 4
ORIENTATION = 0x0112


def config(root: Path, **kwargs: object) -> DatasetConfig:
    return DatasetConfig(**{"source": "folder", "root": str(root), "num_classes": K, "resize": 8, "crop": 8,
                            **kwargs})


def rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def class_map(height: int, width: int, seed: int = 0, values: tuple[int, ...] = (0, 1, 2, 3)) -> np.ndarray:
    return np.random.default_rng(seed).choice(np.array(values, np.uint8), (height, width))


def save(path: Path, array: np.ndarray, orientation: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if orientation is None:
        Image.fromarray(array).save(path)
    else:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        Image.fromarray(array).save(path, exif=exif, **({"quality": 100} if path.suffix == ".jpg" else {}))
    return path


def tree(root: Path, train: dict[str, np.ndarray], val: dict[str, np.ndarray]) -> Path:
    """ROOT/images/<split>/<name> and a class map of the same size in ROOT/labels/<split>/<stem>.png."""
    for split, images in (("train", train), ("val", val)):
        for n, (name, image) in enumerate(images.items()):
            save(root / "images" / split / name, image)
            save(root / "labels" / split / f"{Path(name).stem}.png", class_map(*image.shape[:2], seed=n))
    return root


def prepare(table, cfg: DatasetConfig, role: str, out: Path, shard_size: int = 2) -> ShardStore:
    rows = table[table["split"] == role].reset_index(drop=True)
    write_store(PreparedImageStream(rows, cfg, shard_size=shard_size), out, progress=False)
    return ShardStore(out)


# ------------------------------------------------------------------------------------------------------- 16 bit
def test_16bit_grey_image_is_scaled_to_8bit_not_saturated(tmp_path: Path) -> None:
    grey = np.array([[0, 255, 256, 5000], [32767, 32768, 65280, 65535]], np.uint16)
    path = save(tmp_path / "g16.png", grey)
    with Image.open(path) as img:
        assert img.mode == "I;16"
    image = load_image(path)
    assert image.dtype == np.uint8 and image.shape == (2, 4, 3)
    np.testing.assert_array_equal(image[..., 0], [[0, 0, 1, 19], [127, 128, 255, 255]])  # value >> 8
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_16bit_labels_keep_class_ids_above_255(tmp_path: Path) -> None:
    """A 16-bit class map (K = 300, ignore 65535) reaches the store unchanged; with K = 4 its ids are refused, never
    truncated to their low byte (257 -> 1)."""
    label = np.array([[0, 257, 299, 65535]] * 4, np.uint16)
    root = tmp_path / "data"
    for split in ("train", "val"):
        save(root / "images" / split / f"{split}.png", rgb(4, 4))
        save(root / "labels" / split / f"{split}.png", label)
    cfg = config(root, num_classes=300, ignore_index=65535, resize=4, crop=4)
    np.testing.assert_array_equal(load_label(root / "labels/val/val.png", cfg), label)
    store = prepare(build_index(cfg).table, cfg, "val", tmp_path / "val")
    assert store.fields["label"].dtype == "int32"
    np.testing.assert_array_equal(store.item("val")["label"], label)
    with pytest.raises(BadFileError, match=r"label values \[257, 299, 65535\]"):
        load_label(root / "labels/val/val.png", config(root))


# ------------------------------------------------------------------------------------------------------------ EXIF
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_is_applied_to_the_image(tmp_path: Path, suffix: str) -> None:
    """Orientation 6 (the camera turned clockwise): shown rotated 90 degrees clockwise, width and height swapped in
    the index too, so the label drawn on the image as shown (10 wide, 6 high) is accepted."""
    stored = rgb(10, 6)
    root = tmp_path / "data"
    save(root / "images/train/p.png", rgb(8, 8))
    save(root / "labels/train/p.png", class_map(8, 8))
    path = save(root / "images/val" / f"r{suffix}", stored, orientation=6)
    save(root / "labels/val/r.png", class_map(6, 10))
    shown = load_image(path)
    assert shown.shape == (6, 10, 3)
    if suffix == ".png":
        np.testing.assert_array_equal(shown, np.rot90(stored, k=-1))
    table = build_index(config(root)).table
    assert table.set_index("image_id").loc["r", ["width", "height"]].tolist() == [10, 6]
    # the benchmark sources read images as stored, as the papers' loaders do
    assert config(root).exif and not DatasetConfig("cocostuff27", str(root), num_classes=27).exif
    assert load_image(path, exif=False).shape == stored.shape


def test_exif_orientation_square_image_is_rotated_label_is_not(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                              ) -> None:
    """A square photo with orientation 8: the stored image is the rotated one, its label used as stored; a label's
    own EXIF tag is ignored, with a warning naming it."""
    stored, label = rgb(8, 8, seed=1), class_map(8, 8, seed=1)
    root = tmp_path / "data"
    save(root / "images/train/p.png", rgb(8, 8))
    save(root / "labels/train/p.png", class_map(8, 8))
    save(root / "images/val/s.png", stored, orientation=8)
    label_path = save(root / "labels/val/s.png", label, orientation=8)
    cfg = config(root)
    with caplog.at_level(logging.WARNING, logger="unseg.core.data.sources"):
        store = prepare(build_index(cfg).table, cfg, "val", tmp_path / "val")
    np.testing.assert_array_equal(store.item("s")["image"], np.rot90(stored, k=1))
    np.testing.assert_array_equal(store.item("s")["label"], label)
    warnings = [r.getMessage() for r in caplog.records if str(label_path) in r.getMessage()]
    assert len(warnings) == 1 and "EXIF orientation 8 ignored: labels are used as stored" in warnings[0]


def test_label_matching_the_unrotated_image_names_exif(tmp_path: Path) -> None:
    root = tmp_path / "data"
    save(root / "images/train/p.png", rgb(8, 8))
    save(root / "labels/train/p.png", class_map(8, 8))
    save(root / "images/val/r.jpg", rgb(10, 6), orientation=6)
    save(root / "labels/val/r.png", class_map(10, 6))  # drawn on the stored pixels, not on the image as shown
    with pytest.raises(BadFileError, match="EXIF orientation 6") as info:
        build_index(config(root))
    assert info.value.path == str(root / "labels/val/r.png")


# ----------------------------------------------------------------------------------------------------------- alpha
def test_alpha_is_dropped_with_one_warning_naming_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rgba = np.concatenate([rgb(4, 5), np.full((4, 5, 1), 255, np.uint8)], axis=2)
    opaque = save(tmp_path / "opaque.png", rgba)
    rgba[0, :3, 3] = 0
    transparent = save(tmp_path / "transparent.png", rgba)
    with caplog.at_level(logging.WARNING, logger="unseg.core.data.sources"):
        np.testing.assert_array_equal(load_image(opaque), rgba[..., :3])
        assert caplog.records == []  # fully opaque: nothing is lost, nothing to say
        np.testing.assert_array_equal(load_image(transparent), rgba[..., :3])  # colours as stored
    [record] = caplog.records
    assert str(transparent) in record.getMessage() and "alpha" in record.getMessage()
    assert "3 of 20 pixels" in record.getMessage()


# ------------------------------------------------------------------------------------- an empty split after skips
def test_split_emptied_at_decode_time_is_an_error_naming_it(tmp_path: Path) -> None:
    """Every val image reads its header but not its pixels: with on_bad_file=skip the index keeps them, preparation
    skips them all; that is an error naming the split and the count, and no store is left (a rerun says it again)."""
    root = tree(tmp_path / "data", {"t0.png": rgb(8, 8)}, {f"v{i}.png": rgb(40, 40, seed=i) for i in range(3)})
    for path in (root / "images/val").iterdir():
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    cfg = config(root, on_bad_file="skip")
    table = build_index(cfg).table
    assert (table["split"] == "val").sum() == 3
    for _ in range(2):
        with pytest.raises(BadFileError, match=r"empty val split: all 3 images were skipped as bad") as info:
            prepare(table, cfg, "val", tmp_path / "val")
        assert info.value.path == str(root / "images/val")
        assert "v0.png" in str(info.value)
        assert not (tmp_path / "val").exists()


def test_split_emptied_at_index_time_names_split_and_count(tmp_path: Path) -> None:
    root = tree(tmp_path / "data", {"t0.png": rgb(8, 8)}, {"v0.png": rgb(8, 8), "v1.png": rgb(8, 8)})
    for path in (root / "images/val").iterdir():
        path.write_bytes(b"not an image")
    with pytest.raises(BadFileError, match="empty val split: all 2 images were skipped as bad"):
        build_index(config(root, on_bad_file="skip"))


# ---------------------------------------------------------------------------------- same image id in two splits
def test_same_stem_in_train_and_val(tmp_path: Path) -> None:
    train = {f"{i:04d}.png": rgb(8, 8, seed=i) for i in range(1, 4)}
    val = {f"{i:04d}.png": rgb(8, 8, seed=10 + i) for i in range(1, 3)}
    root = tree(tmp_path / "data", train, val)
    cfg = config(root)
    table = build_index(cfg).table
    assert table.groupby("split")["image_id"].apply(list).to_dict() == {
        "train": ["0001", "0002", "0003"], "val": ["0001", "0002"]}
    stores = {role: prepare(table, cfg, role, tmp_path / role) for role in ("train", "val")}
    # each store holds its own split's pixels under the shared ids
    for role, images in (("train", train), ("val", val)):
        for name, image in images.items():
            np.testing.assert_array_equal(stores[role].item(Path(name).stem)["image"],
                                          resize_crop(image, 8, 8, nearest=False))


def test_same_stem_twice_in_one_split_is_refused(tmp_path: Path) -> None:
    root = tree(tmp_path / "data", {"a.png": rgb(8, 8), "b.png": rgb(8, 8)}, {"c.png": rgb(8, 8)})
    save(root / "images/train/a.jpg", rgb(8, 8))
    with pytest.raises(BadFileError, match=r"image ids appear twice in the train split: \['a'\]"):
        build_index(config(root))
