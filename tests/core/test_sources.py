"""Tests of the data sources: folder ingestion, bad inputs, DatasetConfig validation, the synthetic source."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from unseg.core.data.sources import (
    INDEX_COLUMNS,
    SOURCES,
    BadFileError,
    DatasetConfig,
    build_index,
    load_image,
    load_label,
    materialise_synthetic,
)

K = 4
# image name -> (width, height); one JPG (upper-case suffix) to check suffix handling
TRAIN = {"a.png": (12, 10), "b.JPG": (16, 9), "c.png": (10, 10)}
VAL = {"d.png": (11, 13), "e.jpg": (12, 12)}


def write_image(path: Path, size: tuple[int, int], seed: int = 0) -> None:
    width, height = size
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_label(path: Path, size: tuple[int, int], values: tuple[int, ...] = (0, 1, 2, 3, 255), seed: int = 0
                ) -> np.ndarray:
    width, height = size
    label = np.random.default_rng(seed).choice(np.array(values, dtype=np.uint8), (height, width))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label).save(path)  # uint8 (H, W) -> mode "L"
    with Image.open(path) as img:
        assert img.mode == "L"
    return label


def make_tree(root: Path, train_labels: bool = True) -> Path:
    """ROOT/images/{train,val}/..., ROOT/labels/{val[,train]}/<stem>.png."""
    for split, images in (("train", TRAIN), ("val", VAL)):
        for n, (name, size) in enumerate(images.items()):
            write_image(root / "images" / split / name, size, seed=n)
            if split == "val" or train_labels:
                write_label(root / "labels" / split / f"{Path(name).stem}.png", size, seed=n)
    return root


def config(root: Path, **kwargs) -> DatasetConfig:
    return DatasetConfig(**{"source": "folder", "root": str(root), "num_classes": K, "resize": 16, "crop": 16,
                            **kwargs})


# ------------------------------------------------------------------------------------------------- happy path
def test_folder_index_table(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "data")
    result = build_index(config(root))
    table = result.table
    assert result.skipped == []
    assert list(table.columns) == list(INDEX_COLUMNS)
    assert table["image_id"].tolist() == ["a", "b", "c", "d", "e"]
    assert table["split"].tolist() == ["train"] * 3 + ["val"] * 2
    assert table["image_path"].tolist() == [str(root / "images" / "train" / n) for n in TRAIN] + \
        [str(root / "images" / "val" / n) for n in VAL]
    assert table["label_path"].tolist() == [str(root / "labels" / "train" / f"{s}.png") for s in "abc"] + \
        [str(root / "labels" / "val" / f"{s}.png") for s in "de"]
    assert table["width"].tolist() == [s[0] for s in [*TRAIN.values(), *VAL.values()]]
    assert table["height"].tolist() == [s[1] for s in [*TRAIN.values(), *VAL.values()]]
    assert table["width"].dtype == np.int32 and table["height"].dtype == np.int32
    for column in ("image_id", "split", "image_path", "label_path"):
        assert pd.api.types.is_string_dtype(table[column])
    assert table.index.tolist() == list(range(5))


def test_folder_ignores_other_files(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "data")
    (root / "images" / "train" / "notes.txt").write_text("not an image")
    (root / "images" / "train" / "sub").mkdir()
    assert build_index(config(root)).table["image_id"].tolist() == ["a", "b", "c", "d", "e"]


def test_train_without_labels_is_allowed(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "data", train_labels=False)
    table = build_index(config(root)).table
    assert table.loc[table["split"] == "train", "label_path"].tolist() == ["", "", ""]
    assert all(p.endswith(".png") for p in table.loc[table["split"] == "val", "label_path"])


def test_custom_split_folders(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "data")
    (root / "images" / "val").rename(root / "images" / "validation")
    (root / "labels" / "val").rename(root / "labels" / "validation")
    table = build_index(config(root, splits={"train": "train", "val": "validation"})).table
    assert table.loc[table["split"] == "val", "image_path"].str.contains("validation").all()


# ------------------------------------------------------------------------------------------------ bad inputs
def _corrupt_bytes(path: Path) -> None:
    path.write_bytes(b"this is not an image at all" * 3)


def bad_missing_root(root: Path) -> tuple[Path, Path]:
    shutil.rmtree(root)
    return root, root


def bad_missing_split(root: Path) -> tuple[Path, Path]:
    shutil.rmtree(root / "images" / "val")
    return root / "images" / "val", root / "images" / "val"


def bad_empty_split(root: Path) -> tuple[Path, Path]:
    for path in (root / "images" / "train").iterdir():
        path.unlink()
    (root / "images" / "train" / "readme.txt").write_text("no images here")
    return root / "images" / "train", root / "images" / "train"


def bad_corrupt_image(root: Path) -> tuple[Path, str]:
    path = root / "images" / "train" / "x.png"
    _corrupt_bytes(path)
    write_label(root / "labels" / "train" / "x.png", (8, 8))
    return path, "x"


def bad_missing_label(root: Path) -> tuple[Path, str]:
    write_image(root / "images" / "val" / "f.png", (9, 9))
    return root / "labels" / "val" / "f.png", "f"


def bad_missing_train_label(root: Path) -> tuple[Path, str]:
    write_image(root / "images" / "train" / "g.png", (9, 9))
    return root / "labels" / "train" / "g.png", "g"


def bad_size_mismatch(root: Path) -> tuple[Path, str]:
    write_image(root / "images" / "val" / "f.png", (9, 8))
    write_label(root / "labels" / "val" / "f.png", (8, 9))
    return root / "labels" / "val" / "f.png", "f"


def bad_unreadable_label(root: Path) -> tuple[Path, str]:
    write_image(root / "images" / "val" / "f.png", (9, 8))
    _corrupt_bytes(root / "labels" / "val" / "f.png")
    return root / "labels" / "val" / "f.png", "f"


def bad_val_without_labels(root: Path) -> tuple[Path, Path]:
    shutil.rmtree(root / "labels" / "val")
    return root / "labels" / "val", root / "labels" / "val"


FOLDER_ERRORS = [  # (break the tree, error type, words of the problem)
    (bad_missing_root, FileNotFoundError, "does not exist"),
    (bad_missing_split, FileNotFoundError, "split folder for the val split is missing"),
    (bad_empty_split, BadFileError, "empty split"),
    (bad_val_without_labels, FileNotFoundError, "val split needs labels"),
]
FILE_ERRORS = [  # bad files: raised with on_bad_file=raise, skipped with on_bad_file=skip
    (bad_corrupt_image, "unreadable image"),
    (bad_missing_label, "missing label for image f.png"),
    (bad_missing_train_label, "missing label for image g.png"),
    (bad_size_mismatch, "label size 8x9 differs from image f.png size 9x8"),
    (bad_unreadable_label, "unreadable label"),
]


@pytest.mark.parametrize(("breaker", "error", "problem"), FOLDER_ERRORS, ids=lambda v: getattr(v, "__name__", ""))
@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_bad_folders_raise_under_both_policies(tmp_path: Path, breaker, error, problem, policy: str) -> None:
    root = make_tree(tmp_path / "data")
    path, _ = breaker(root)
    with pytest.raises(error) as info:
        build_index(config(root, on_bad_file=policy))
    message = str(info.value)
    assert str(path) in message
    assert problem in message
    if isinstance(info.value, BadFileError):
        assert info.value.path == str(path) and info.value.problem in message


@pytest.mark.parametrize(("breaker", "problem"), FILE_ERRORS, ids=lambda v: getattr(v, "__name__", ""))
def test_bad_files_raise(tmp_path: Path, breaker, problem: str) -> None:
    root = make_tree(tmp_path / "data")
    path, _ = breaker(root)
    with pytest.raises(BadFileError) as info:
        build_index(config(root, on_bad_file="raise"))
    assert str(info.value).startswith(f"{path}: ")
    assert problem in str(info.value)
    assert info.value.path == str(path)
    assert problem in info.value.problem


@pytest.mark.parametrize(("breaker", "problem"), FILE_ERRORS, ids=lambda v: getattr(v, "__name__", ""))
def test_bad_files_skipped(tmp_path: Path, breaker, problem: str) -> None:
    root = make_tree(tmp_path / "data")
    path, image_id = breaker(root)
    result = build_index(config(root, on_bad_file="skip"))
    assert result.table["image_id"].tolist() == ["a", "b", "c", "d", "e"]
    assert len(result.skipped) == 1
    [entry] = result.skipped
    assert entry["id"] == image_id
    assert entry["path"] == str(path)
    assert problem in entry["problem"]


def test_skip_lists_every_bad_file(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "data")
    breakers = [bad_corrupt_image, bad_missing_train_label, bad_size_mismatch]
    paths = [breaker(root)[0] for breaker in breakers]
    result = build_index(config(root, on_bad_file="skip"))
    assert result.table["image_id"].tolist() == ["a", "b", "c", "d", "e"]
    assert sorted(e["path"] for e in result.skipped) == sorted(str(p) for p in paths)


def test_split_with_only_bad_files_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "data")
    for path in (root / "images" / "val").iterdir():
        _corrupt_bytes(path)
    with pytest.raises(BadFileError, match="empty val split: all 2 images were skipped as bad") as info:
        build_index(config(root, on_bad_file="skip"))
    assert info.value.path == str(root / "images" / "val")


# ------------------------------------------------------------------------------------------ decode-time checks
def test_load_label_values(tmp_path: Path) -> None:
    label = write_label(tmp_path / "ok.png", (7, 5), values=(0, 3, 255))
    got = load_label(tmp_path / "ok.png", config(tmp_path))
    np.testing.assert_array_equal(got, label)
    assert got.shape == (5, 7)


@pytest.mark.parametrize(("values", "bad"), [((0, 1, 4), [4]), ((2, 9, 200, 255), [9, 200]), ((254, 0), [254])])
def test_load_label_out_of_range(tmp_path: Path, values: tuple[int, ...], bad: list[int]) -> None:
    path = tmp_path / "lab.png"
    label = np.array(values, dtype=np.uint8).reshape(1, -1).repeat(3, axis=0)
    Image.fromarray(label).save(path)
    with pytest.raises(BadFileError) as info:
        load_label(path, config(tmp_path))
    assert info.value.path == str(path)
    assert f"label values {bad}" in str(info.value)
    assert f"outside [0, {K})" in str(info.value) and "ignore_index 255" in str(info.value)


def test_load_label_other_ignore_index(tmp_path: Path) -> None:
    path = tmp_path / "lab.png"
    Image.fromarray(np.array([[0, 3, 100]], np.uint8)).save(path)
    np.testing.assert_array_equal(load_label(path, config(tmp_path, ignore_index=100)), [[0, 3, 100]])
    with pytest.raises(BadFileError, match=r"\[100\]"):
        load_label(path, config(tmp_path, ignore_index=255))


def test_load_label_rgb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rgb.png"
    write_image(path, (5, 4))
    with pytest.raises(BadFileError, match="mode RGB") as info:
        load_label(path, config(tmp_path))
    assert info.value.path == str(path)


def _png_chunks(data: bytes) -> list[tuple[bytes, int]]:
    pos, out = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        out.append((data[pos + 4:pos + 8], pos))
        pos += 12 + length
    return out


def truncated_png(path: Path, label: bool) -> None:
    """A PNG whose header reads but whose pixels are cut off."""
    if label:
        write_label(path, (60, 40), values=(0, 1, 2, 3))
    else:
        write_image(path, (60, 40))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def broken_chunk_png(path: Path) -> None:
    """A PNG whose header reads but whose second IDAT chunk is broken (PIL raises SyntaxError while decoding)."""
    write_image(path, (200, 200))
    data = bytearray(path.read_bytes())
    idats = [pos for cid, pos in _png_chunks(bytes(data)) if cid == b"IDAT"]
    assert len(idats) >= 2
    data[idats[1] + 4:idats[1] + 8] = b"\x01\x02\x03\x04"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("make", ["garbage", "truncated", "broken_chunk"])
def test_load_image_corrupt_raises_bad_file(tmp_path: Path, make: str) -> None:
    path = tmp_path / "x.png"
    if make == "garbage":
        _corrupt_bytes(path)
    elif make == "truncated":
        truncated_png(path, label=False)
    else:
        broken_chunk_png(path)
    with pytest.raises(BadFileError, match="corrupt or unreadable image") as info:
        load_image(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)


def test_load_label_truncated_raises_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "lab.png"
    truncated_png(path, label=True)
    with Image.open(path) as img:  # the header still reads: only a decode finds the problem
        assert img.size == (60, 40)
    with pytest.raises(BadFileError) as info:
        load_label(path, config(tmp_path))
    assert info.value.path == str(path)


def test_load_image_ok(tmp_path: Path) -> None:
    write_image(tmp_path / "ok.png", (7, 5), seed=3)
    image = load_image(tmp_path / "ok.png")
    assert image.dtype == np.uint8 and image.shape == (5, 7, 3)
    expected = np.random.default_rng(3).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(image, expected)
    Image.fromarray(expected[..., 0]).save(tmp_path / "grey.png")
    assert load_image(tmp_path / "grey.png").shape == (5, 7, 3)


# --------------------------------------------------------------------------------------------- DatasetConfig
@pytest.mark.parametrize(("kwargs", "match"), [
    ({"source": "s3"}, "unknown dataset.source 's3'; valid: cityscapes27, cocostuff27, folder, potsdam3, synthetic"),
    ({"num_classes": 0}, "num_classes must be >= 1"),
    ({"ignore_index": 0}, "ignore_index 0 is a class id"),
    ({"ignore_index": 3}, "ignore_index 3 is a class id"),
    ({"class_names": ("a", "b")}, "class_names has 2 names for 4 classes"),
    ({"on_bad_file": "ignore"}, "on_bad_file 'ignore'; valid: raise, skip"),
    ({"crop": 20, "resize": 16}, "crop must be in"),
    ({"crop": 0}, "crop must be in"),
    ({"splits": {"train": "train"}}, "splits must map exactly"),
])
def test_dataset_config_validation(tmp_path: Path, kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match.replace("[", r"\[").replace("(", r"\(")):
        config(tmp_path, **kwargs)


def test_dataset_config_valid_values(tmp_path: Path) -> None:
    cfg = config(tmp_path, ignore_index=4, class_names=("a", "b", "c", "d"))
    assert cfg.names == ["a", "b", "c", "d"]
    assert config(tmp_path).names == ["class_0", "class_1", "class_2", "class_3"]
    assert config(tmp_path).label_dtype == "uint8"
    assert config(tmp_path, ignore_index=-1).label_dtype == "int32"
    assert config(tmp_path, num_classes=300, ignore_index=300).label_dtype == "int32"
    assert set(SOURCES) == {"folder", "synthetic", "cocostuff27", "cityscapes27", "potsdam3"}


def test_from_params(tmp_path: Path) -> None:
    cfg = DatasetConfig.from_params({"source": "folder", "root": str(tmp_path), "num_classes": 2,
                                     "class_names": ["x", "y"], "resize": 32, "crop": 16}, seed=7)
    assert cfg.class_names == ("x", "y") and cfg.seed == 7 and cfg.crop == 16
    with pytest.raises(ValueError, match=r"unknown dataset parameters \['colour'\]") as info:
        DatasetConfig.from_params({"source": "folder", "root": "r", "num_classes": 2, "colour": 1}, seed=0)
    assert "'num_classes'" in str(info.value) and "'on_bad_file'" in str(info.value)  # lists the valid keys
    with pytest.raises(ValueError, match=r"unknown dataset parameters \['seed'\]"):
        DatasetConfig.from_params({"source": "folder", "root": "r", "num_classes": 2, "seed": 3}, seed=0)


# ------------------------------------------------------------------------------------------------ synthetic
SMALL = {"num_train": 6, "num_val": 3, "height": 48, "width": 64}


def synthetic_config(root: Path, seed: int = 0, **synthetic) -> DatasetConfig:
    return DatasetConfig(source="synthetic", root=str(root), num_classes=8, resize=48, crop=48, seed=seed,
                         synthetic={**SMALL, **synthetic})


def test_synthetic_written_once_and_indexed(tmp_path: Path) -> None:
    root = tmp_path / "synth"
    cfg = synthetic_config(root)
    assert materialise_synthetic(cfg) == root
    marker = root / "synthetic.json"
    assert json.loads(marker.read_text())["config"]["seed"] == 0
    first_image = root / "images" / "train" / "train_000000.png"
    mtimes = {p: p.stat().st_mtime_ns for p in (marker, first_image)}
    (root / "sentinel").write_text("kept if the set is reused")

    result = build_index(cfg)  # materialises again: must reuse
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    assert (root / "sentinel").exists()
    table = result.table
    assert result.skipped == []
    assert (table["split"] == "train").sum() == 6 and (table["split"] == "val").sum() == 3
    assert table["image_id"].tolist() == [f"train_{i:06d}" for i in range(6)] + [f"val_{i:06d}" for i in range(3)]
    assert (table["width"] == 64).all() and (table["height"] == 48).all()
    assert all(Path(p).is_file() for p in table["label_path"])
    for path in table["label_path"]:
        label = load_label(path, cfg)
        assert label.shape == (48, 64) and label.max() < 8
    assert not list(tmp_path.glob(".synth.staging-*"))


def test_synthetic_regenerated_when_the_seed_changes(tmp_path: Path) -> None:
    root = tmp_path / "synth"
    materialise_synthetic(synthetic_config(root, seed=0))
    image = root / "images" / "train" / "train_000000.png"
    before = np.asarray(Image.open(image))
    (root / "sentinel").write_text("gone when regenerated")
    materialise_synthetic(synthetic_config(root, seed=1))
    assert not (root / "sentinel").exists()
    assert json.loads((root / "synthetic.json").read_text())["config"]["seed"] == 1
    assert not np.array_equal(before, np.asarray(Image.open(image)))
    # and other generator settings regenerate too
    materialise_synthetic(synthetic_config(root, seed=1, num_train=7))
    assert len(list((root / "images" / "train").iterdir())) == 7


def test_synthetic_needs_its_class_count(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synthetic source has 8 classes; dataset.num_classes is 5"):
        DatasetConfig(source="synthetic", root=str(tmp_path / "s"), num_classes=5, resize=48, crop=48,
                      synthetic=SMALL)


def test_synthetic_source_supplies_its_class_names_and_groups(tmp_path: Path) -> None:
    cfg = DatasetConfig(source="synthetic", root=str(tmp_path / "s"), num_classes=8)
    assert cfg.names[:2] == ["stripes", "dots"] and len(cfg.names) == 8
    assert cfg.thing_classes == (5, 6, 7) and cfg.stuff_classes == (0, 1, 2, 3, 4)
    own = DatasetConfig(source="synthetic", root=str(tmp_path / "s"), num_classes=8, thing_classes=(7,),
                        stuff_classes=(0,))
    assert own.thing_classes == (7,) and own.stuff_classes == (0,)


def test_folder_source_has_no_class_groups_unless_given(tmp_path: Path) -> None:
    cfg = DatasetConfig(source="folder", root=str(tmp_path), num_classes=3)
    assert cfg.names == ["class_0", "class_1", "class_2"]
    assert cfg.thing_classes is None and cfg.stuff_classes is None
    with pytest.raises(ValueError, match="outside"):
        DatasetConfig(source="folder", root=str(tmp_path), num_classes=3, thing_classes=(5,))
    with pytest.raises(ValueError, match="share ids"):
        DatasetConfig(source="folder", root=str(tmp_path), num_classes=3, thing_classes=(0, 1), stuff_classes=(1,))
