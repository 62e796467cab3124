"""Tests of the benchmark sources (cocostuff27, cityscapes27, potsdam3) on miniatures of their official layouts:
indexes, label mappings, bad inputs under both on_bad_file policies, .mat decoding and dataset.options."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from benchmark_trees import (
    CITYSCAPES_TRAIN,
    CITYSCAPES_VAL,
    COCO_TRAIN,
    COCO_UNLISTED,
    COCO_VAL,
    POTSDAM_LISTS,
    make_cityscapes,
    make_cocostuff,
    make_potsdam,
    raw_label,
    write_png_label,
    write_rgb,
)
from PIL import ImageFile

from unseg.core.data import cityscapes, cocostuff, potsdam
from unseg.core.data.prepare import PreparedImageStream, resize_crop
from unseg.core.data.sources import (
    INDEX_COLUMNS,
    SOURCE_CLASSES,
    SOURCES,
    BadFileError,
    DatasetConfig,
    LabelMap,
    build_index,
    load_image,
    load_label,
)

COCO_SPLITS = {"train": "train2017", "val": "val2017"}
POTSDAM_SPLITS = {"train": "labelled_train", "val": "labelled_test"}


def coco_config(root: Path, **kwargs) -> DatasetConfig:
    return DatasetConfig(**{"source": "cocostuff27", "root": str(root), "num_classes": 27, "splits": COCO_SPLITS,
                            "resize": 16, "crop": 16, **kwargs})


def city_config(root: Path, **kwargs) -> DatasetConfig:
    return DatasetConfig(**{"source": "cityscapes27", "root": str(root), "num_classes": 27, "resize": 16,
                            "crop": 16, **kwargs})


def potsdam_config(root: Path, **kwargs) -> DatasetConfig:
    return DatasetConfig(**{"source": "potsdam3", "root": str(root), "num_classes": 3, "splits": POTSDAM_SPLITS,
                            "resize": 16, "crop": 16, **kwargs})


@pytest.fixture
def coco(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    return make_cocostuff(tmp_path / "cocostuff")


@pytest.fixture
def city(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    return make_cityscapes(tmp_path / "cityscapes")


@pytest.fixture
def pots(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    return make_potsdam(tmp_path / "potsdam")


# ------------------------------------------------------------------------------------------------ label mappings
# the COCO-Stuff hierarchy: fine labels per super-category (labels.txt / cocostuffhierarchy.json)
COARSE_SIZES = {"electronic": 6, "appliance": 6, "food-things": 10, "furniture-things": 10, "indoor": 8,
                "kitchen": 8, "accessory": 8, "animal": 10, "outdoor": 6, "person": 1, "sports": 10, "vehicle": 8,
                "ceiling": 2, "floor": 6, "food-stuff": 4, "furniture-stuff": 11, "rawmaterial": 4, "textile": 11,
                "wall": 7, "window": 2, "building": 6, "ground": 11, "plant": 9, "sky": 2, "solid": 6,
                "structural": 5, "water": 5}


def test_coco_fine_to_coarse_covers_all_182_fine_ids() -> None:
    assert len(cocostuff.FINE_CLASSES) == 182 and set(cocostuff.FINE_TO_COARSE) == set(range(182))
    raw = np.arange(182).reshape(2, 91)
    mapped = cocostuff.LABELS(raw, 255)
    assert mapped.min() >= 0 and mapped.max() < 27
    counts = Counter(cocostuff.CLASS_NAMES[c] for c in mapped.ravel())
    assert counts == COARSE_SIZES
    # things are labels.txt 1-91 (fine 0-90) -> classes 0-11; stuff 92-182 (fine 91-181) -> 12-26
    assert (mapped.ravel()[:91] < 12).all() and (mapped.ravel()[91:] >= 12).all()
    names = [name for name, _ in cocostuff.FINE_CLASSES]
    assert len(set(names)) == 182
    spot = {0: ("person", "person"), 2: ("car", "vehicle"), 11: ("street sign", "outdoor"),
            51: ("banana", "food-things"), 61: ("chair", "furniture-things"), 71: ("tv", "electronic"),
            90: ("hair brush", "indoor"), 91: ("banner", "textile"), 97: ("cabinet", "furniture-stuff"),
            120: ("food-other", "food-stuff"), 123: ("grass", "plant"), 148: ("road", "ground"),
            156: ("sky-other", "sky"), 171: ("wall-concrete", "wall"), 181: ("wood", "solid")}
    for fine, (name, coarse) in spot.items():
        assert cocostuff.FINE_CLASSES[fine][0] == name
        assert cocostuff.CLASS_NAMES[cocostuff.FINE_TO_COARSE[fine]] == coarse


def test_coco_unlabelled_is_ignored_and_other_ids_are_unexpected() -> None:
    np.testing.assert_array_equal(cocostuff.LABELS(np.array([[255, 0]]), 255), [[255, 9]])
    np.testing.assert_array_equal(cocostuff.LABELS(np.array([[255, 181]]), -1), [[-1, 24]])
    for bad in (182, 200, 254, 256, -1):
        with pytest.raises(ValueError, match=rf"unexpected label ids \[{bad}\]; the raw ids are 0\.\.181, 255"):
            cocostuff.LABELS(np.array([[0, bad]]), 255)


def test_coco_classes() -> None:
    assert len(cocostuff.CLASS_NAMES) == 27 and len(set(cocostuff.CLASS_NAMES)) == 27  # metric names are unique
    assert cocostuff.CLASS_NAMES[:3] == ("electronic", "appliance", "food-things")
    assert cocostuff.CLASS_NAMES[12:14] == ("ceiling", "floor") and cocostuff.CLASS_NAMES[-1] == "water"
    cfg = coco_config(Path("r"))
    assert cfg.thing_classes == tuple(range(12)) and cfg.stuff_classes == tuple(range(12, 27))
    assert cfg.names == list(cocostuff.CLASS_NAMES)


def test_cityscapes_mapping_covers_all_34_ids() -> None:
    raw = np.arange(34).reshape(1, 34)
    expected = [255] * 7 + list(range(27))
    np.testing.assert_array_equal(cityscapes.LABELS(raw, 255), [expected])
    np.testing.assert_array_equal(cityscapes.LABELS(np.array([[-1, 255, 7, 33]]), 255), [[255, 255, 0, 26]])
    assert len(cityscapes.LABEL_NAMES) == 34
    assert cityscapes.CLASS_NAMES[0] == "road" and cityscapes.CLASS_NAMES[11] == "polegroup"
    assert cityscapes.CLASS_NAMES[-1] == "bicycle" and len(set(cityscapes.CLASS_NAMES)) == 27
    for bad in (34, 100, 254, -2):
        with pytest.raises(ValueError, match=rf"unexpected label ids \[{bad}\]"):
            cityscapes.LABELS(np.array([[7, bad]]), 255)
    assert city_config(Path("r")).thing_classes is None  # no things/stuff split for Cityscapes-27


def test_potsdam_mapping_covers_the_6_isprs_classes() -> None:
    # impervious surfaces, building, low vegetation, tree, car, clutter -> road, building, vegetation
    np.testing.assert_array_equal(potsdam.LABELS(np.array([[0, 1, 2, 3, 4, 5, 255]]), 255), [[0, 1, 2, 2, 0, 1, 255]])
    assert [name for name, _ in potsdam.ISPRS_CLASSES] == ["impervious surfaces", "building", "low vegetation",
                                                           "tree", "car", "clutter"]
    for bad in (6, 7, 254):
        with pytest.raises(ValueError, match=rf"unexpected label ids \[{bad}\]; the raw ids are 0\.\.5, 255"):
            potsdam.LABELS(np.array([[bad]]), 255)


def test_label_map_refuses_an_id_that_is_class_and_ignored() -> None:
    with pytest.raises(ValueError, match=r"raw ids \[3\] are both"):
        LabelMap({3: 0}, ignored=(3,))


def test_sources_are_registered() -> None:
    assert {"cocostuff27", "cityscapes27", "potsdam3"} <= set(SOURCES)
    assert len(SOURCE_CLASSES["potsdam3"]["class_names"]) == 3


# ------------------------------------------------------------------------------------------------ COCO-Stuff-27
def test_coco_index(coco) -> None:
    root, _ = coco
    result = build_index(coco_config(root))
    table = result.table
    assert result.skipped == [] and list(table.columns) == list(INDEX_COLUMNS)
    assert table["image_id"].tolist() == [*COCO_TRAIN, *COCO_VAL]  # the list's order; the unlisted image is out
    assert table["split"].tolist() == ["train"] * 3 + ["val"] * 2
    assert table["image_path"].tolist() == [str(root / "images" / "train2017" / f"{i}.jpg") for i in COCO_TRAIN] + \
        [str(root / "images" / "val2017" / f"{i}.jpg") for i in COCO_VAL]
    assert table["label_path"].tolist() == [str(root / "annotations" / "train2017" / f"{i}.png") for i in COCO_TRAIN] \
        + [str(root / "annotations" / "val2017" / f"{i}.png") for i in COCO_VAL]
    assert list(zip(table["width"], table["height"], strict=True)) == [*COCO_TRAIN.values(), *COCO_VAL.values()]


def test_coco_curated_list_options(coco, tmp_path: Path) -> None:
    root, _ = coco
    everything = build_index(coco_config(root, options={"curated_list": None})).table
    assert COCO_UNLISTED in everything["image_id"].tolist() and len(everything) == 6
    lists = tmp_path / "lists"
    for split, ids in (("train2017", ["000000000025"]), ("val2017", ["000000000285.jpg"])):
        (lists / split).mkdir(parents=True)
        (lists / split / "mine.txt").write_text("\n".join(ids))
    table = build_index(coco_config(root, options={"curated_list": str(lists / "{split}" / "mine.txt")})).table
    assert table["image_id"].tolist() == ["000000000025", "000000000285"]


def test_coco_labels_are_mapped_to_27_classes(coco) -> None:
    root, raw = coco
    cfg = coco_config(root)
    table = build_index(cfg).table
    for row in table.itertuples():
        expected = np.vectorize(lambda v: 255 if v == 255 else cocostuff.FINE_TO_COARSE[int(v)])(raw[row.image_id])
        np.testing.assert_array_equal(load_label(row.label_path, cfg), expected)


def test_coco_missing_curated_list(coco) -> None:
    root, _ = coco
    listing = root / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt"
    listing.unlink()
    for policy in ("raise", "skip"):
        with pytest.raises(FileNotFoundError, match="curated image list of the val split is missing") as info:
            build_index(coco_config(root, on_bad_file=policy))
        assert str(listing) in str(info.value)


def test_coco_empty_curated_list(coco) -> None:
    root, _ = coco
    listing = root / "curated" / "train2017" / "Coco164kFull_Stuff_Coarse_7.txt"
    listing.write_text("\n\n")
    with pytest.raises(BadFileError, match="empty split") as info:
        build_index(coco_config(root, on_bad_file="skip"))
    assert info.value.path == str(listing)


def test_coco_missing_annotation_folder(coco) -> None:
    root, _ = coco
    shutil.rmtree(root / "annotations" / "val2017")
    with pytest.raises(FileNotFoundError, match="annotation folder of the val split is missing") as info:
        build_index(coco_config(root))
    assert str(root / "annotations" / "val2017") in str(info.value)


@pytest.mark.parametrize(("victim", "problem"), [("annotations", "missing label for image 000000000025.jpg"),
                                                 ("images", "missing image listed in")])
def test_coco_missing_file(coco, victim: str, problem: str) -> None:
    root, _ = coco
    path = root / victim / "train2017" / f"000000000025.{'png' if victim == 'annotations' else 'jpg'}"
    path.unlink()
    with pytest.raises(BadFileError, match=problem) as info:
        build_index(coco_config(root))
    assert info.value.path == str(path)
    result = build_index(coco_config(root, on_bad_file="skip"))
    assert "000000000025" not in result.table["image_id"].tolist() and len(result.table) == 4
    [entry] = result.skipped
    assert entry["id"] == "000000000025" and entry["path"] == str(path) and problem in entry["problem"]


def test_coco_unexpected_label_ids(coco) -> None:
    root, _ = coco
    path = root / "annotations" / "val2017" / "000000000285.png"
    label = raw_label((30, 40), (0, 181, 200, 255), seed=0)
    write_png_label(path, label)
    cfg = coco_config(root)
    row = build_index(cfg).table.set_index("image_id").loc["000000000285"]  # headers only: indexing passes
    with pytest.raises(BadFileError, match=r"unexpected label ids \[200\]") as info:
        load_label(row["label_path"], cfg)
    assert info.value.path == str(path) and "cocostuff27" in str(info.value)
    # prepare honours the policy: skipped with on_bad_file=skip
    skip = coco_config(root, on_bad_file="skip")
    val = build_index(skip).table.query("split == 'val'").reset_index(drop=True)
    [shard] = PreparedImageStream(val, skip, shard_size=8).iter_shards([0])
    assert shard.ids == ["000000000139"] and shard.skipped[0]["path"] == str(path)


def test_coco_label_size_mismatch(coco) -> None:
    root, _ = coco
    path = root / "annotations" / "train2017" / "000000000009.png"
    write_png_label(path, raw_label((41, 30), (0,), 0))
    with pytest.raises(BadFileError, match="label size 41x30 differs from image 000000000009.jpg size 40x30"):
        build_index(coco_config(root))


def test_coco_num_classes_must_be_27(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="the cocostuff27 source has 27 classes; dataset.num_classes is 26"):
        coco_config(tmp_path, num_classes=26)


# ------------------------------------------------------------------------------------------------ Cityscapes-27
def test_cityscapes_index(city) -> None:
    root, _ = city
    result = build_index(city_config(root))
    table = result.table
    assert result.skipped == []
    train_ids = [i for city_ids in CITYSCAPES_TRAIN.values() for i in city_ids]
    val_ids = [i for city_ids in CITYSCAPES_VAL.values() for i in city_ids]
    assert table["image_id"].tolist() == train_ids + val_ids
    assert table["split"].tolist() == ["train"] * 3 + ["val"] * 2
    first = table.iloc[0]
    assert first["image_path"] == str(root / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png")
    assert first["label_path"] == str(root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png")
    assert (table["width"] == 48).all() and (table["height"] == 24).all()


def test_cityscapes_labels_map_7_to_33(city) -> None:
    root, raw = city
    cfg = city_config(root)
    for row in build_index(cfg).table.itertuples():
        original = raw[row.image_id].astype(np.int64)
        expected = np.where(original >= 7, original - 7, 255)
        np.testing.assert_array_equal(load_label(row.label_path, cfg), expected)


def test_cityscapes_city_without_images(city) -> None:
    root, _ = city
    empty = root / "leftImg8bit" / "train" / "cologne"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images")
    with pytest.raises(BadFileError, match="city folder without \\*_leftImg8bit.png images") as info:
        build_index(city_config(root))
    assert info.value.path == str(empty)
    result = build_index(city_config(root, on_bad_file="skip"))
    assert len(result.table) == 5
    assert result.skipped == [{"id": "cologne", "path": str(empty), "problem": info.value.problem}]


def test_cityscapes_missing_label(city) -> None:
    root, _ = city
    path = root / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000576_gtFine_labelIds.png"
    path.unlink()
    with pytest.raises(BadFileError, match="missing label for image frankfurt_000000_000576_leftImg8bit.png") as info:
        build_index(city_config(root))
    assert info.value.path == str(path)
    result = build_index(city_config(root, on_bad_file="skip"))
    assert result.table["image_id"].tolist()[-1] == "frankfurt_000000_000294"
    assert [e["path"] for e in result.skipped] == [str(path)]


def test_cityscapes_missing_gt_city_reports_each_image(city) -> None:
    root, _ = city
    shutil.rmtree(root / "gtFine" / "train" / "aachen")
    result = build_index(city_config(root, on_bad_file="skip"))
    assert [e["id"] for e in result.skipped] == list(CITYSCAPES_TRAIN["aachen"])


def test_cityscapes_missing_split_folder(city) -> None:
    root, _ = city
    shutil.rmtree(root / "gtFine" / "val")
    with pytest.raises(FileNotFoundError, match="the val split folder is missing") as info:
        build_index(city_config(root, on_bad_file="skip"))
    assert str(root / "gtFine" / "val") in str(info.value)


def test_cityscapes_unexpected_label_ids(city) -> None:
    root, _ = city
    path = root / "gtFine/train/bochum/bochum_000000_000313_gtFine_labelIds.png"
    write_png_label(path, raw_label((48, 24), (7, 26, 34, 200), seed=1))  # e.g. a colour/trainIds mix-up
    with pytest.raises(BadFileError, match=r"unexpected label ids \[34, 200\]; the raw ids are -1\.\.33, 255") as info:
        load_label(path, city_config(root))
    assert info.value.path == str(path)


# ------------------------------------------------------------------------------------------------ Potsdam-3
def test_potsdam_index(pots) -> None:
    root, _ = pots
    result = build_index(potsdam_config(root))
    table = result.table
    assert result.skipped == []
    assert table["image_id"].tolist() == [*POTSDAM_LISTS["labelled_train"], *POTSDAM_LISTS["labelled_test"]]
    assert table["image_path"].iloc[0] == str(root / "imgs" / "3054.mat")
    assert table["label_path"].iloc[0] == str(root / "gt" / "3054.mat")
    assert (table["width"] == 20).all() and (table["height"] == 20).all()


def test_potsdam_unlabelled_train_option(pots) -> None:
    root, _ = pots
    cfg = potsdam_config(root, options={"unlabelled_train": True})
    table = build_index(cfg).table
    train = table[table["split"] == "train"].reset_index(drop=True)
    assert train["image_id"].tolist() == [*POTSDAM_LISTS["labelled_train"], *POTSDAM_LISTS["unlabelled_train"]]
    assert train["label_path"].tolist()[-2:] == ["", ""]
    assert "label" not in PreparedImageStream(train, cfg).fields  # a partly labelled split carries no labels
    only = build_index(potsdam_config(root, splits={"train": "unlabelled_train", "val": "labelled_test"})).table
    assert (only.loc[only["split"] == "train", "label_path"] == "").all()


def test_potsdam_decodes_mat_images_and_labels(pots) -> None:
    root, raw = pots
    cfg = potsdam_config(root)
    table = build_index(cfg).table
    row = table.iloc[0]
    image = load_image(row["image_path"])
    rgbir = scipy.io.loadmat(row["image_path"])["img"]
    assert image.dtype == np.uint8 and image.shape == (20, 20, 3)
    np.testing.assert_array_equal(image, rgbir[:, :, :3])  # the infrared channel is dropped
    lut = np.array([0, 1, 2, 2, 0, 1])
    for row in table.itertuples():
        np.testing.assert_array_equal(load_label(row.label_path, cfg), lut[raw[row.image_id]])
    # through preparation: resized and cropped like any image, labels nearest-neighbour
    val = table[table["split"] == "val"].reset_index(drop=True)
    [shard] = PreparedImageStream(val, cfg, shard_size=8).iter_shards([0])
    np.testing.assert_array_equal(shard.arrays["label"][0], resize_crop(lut[raw["412"]], 16, 16, nearest=True))


def test_potsdam_missing_list(pots) -> None:
    root, _ = pots
    (root / "labelled_test.txt").unlink()
    for policy in ("raise", "skip"):
        with pytest.raises(FileNotFoundError, match="the labelled_test split list is missing") as info:
            build_index(potsdam_config(root, on_bad_file=policy))
        assert str(root / "labelled_test.txt") in str(info.value)


def test_potsdam_missing_label(pots) -> None:
    root, _ = pots
    path = root / "gt" / "17.mat"
    path.unlink()
    with pytest.raises(BadFileError, match="missing label for image 17.mat") as info:
        build_index(potsdam_config(root))
    assert info.value.path == str(path)
    result = build_index(potsdam_config(root, on_bad_file="skip"))
    assert "17" not in result.table["image_id"].tolist() and [e["id"] for e in result.skipped] == ["17"]


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_potsdam_corrupt_mat(pots, policy: str) -> None:
    root, _ = pots
    broken, wrong_key = root / "imgs" / "6210.mat", root / "imgs" / "412.mat"
    broken.write_bytes(b"MATLAB 5.0 MAT-file, but not really" * 2)
    scipy.io.savemat(wrong_key, {"image": np.zeros((20, 20, 3), np.uint8)})
    if policy == "raise":
        with pytest.raises(BadFileError, match="unreadable image") as info:
            build_index(potsdam_config(root))
        assert info.value.path == str(broken)
    else:
        result = build_index(potsdam_config(root, on_bad_file="skip"))
        assert {e["path"] for e in result.skipped} == {str(broken), str(wrong_key)}
        assert "no array 'img'" in next(e["problem"] for e in result.skipped if e["path"] == str(wrong_key))
    for path in (broken, wrong_key):
        with pytest.raises(BadFileError) as info:
            load_image(path)
        assert info.value.path == str(path)


def test_potsdam_unexpected_label_ids(pots) -> None:
    root, _ = pots
    path = root / "gt" / "412.mat"
    scipy.io.savemat(path, {"gt": np.array([[0, 1, 6], [2, 9, 255]], np.int32).repeat(10, 0).repeat(7, 1)[:20, :20]})
    with pytest.raises(BadFileError, match=r"unexpected label ids \[6, 9\]") as info:
        load_label(path, potsdam_config(root))
    assert info.value.path == str(path)


def test_potsdam_split_validation(pots) -> None:
    root, _ = pots
    with pytest.raises(ValueError, match="'train' is not a Potsdam split list; valid: labelled_train, labelled_test"):
        build_index(potsdam_config(root, splits={"train": "train", "val": "labelled_test"}))
    with pytest.raises(ValueError, match="has no labels"):
        build_index(potsdam_config(root, splits={"train": "labelled_train", "val": "unlabelled_train"}))
    with pytest.raises(ValueError, match="unlabelled_train must be true or false"):
        build_index(potsdam_config(root, options={"unlabelled_train": "yes"}))


# ------------------------------------------------------------------------------------------------ shared
def test_mat_label_and_image_shape_checks(tmp_path: Path) -> None:
    cfg = potsdam_config(tmp_path)
    scipy.io.savemat(tmp_path / "rgb.mat", {"gt": np.zeros((4, 4, 3), np.int32)})
    with pytest.raises(BadFileError, match="expected a 2-D integer array"):
        load_label(tmp_path / "rgb.mat", cfg)
    scipy.io.savemat(tmp_path / "float.mat", {"img": np.zeros((4, 4, 3), np.float32)})
    with pytest.raises(BadFileError, match="expected uint8"):
        load_image(tmp_path / "float.mat")
    scipy.io.savemat(tmp_path / "grey.mat", {"img": np.full((4, 5), 7, np.uint8)})
    assert load_image(tmp_path / "grey.mat").shape == (4, 5, 3)


def test_options_are_checked_and_defaulted(tmp_path: Path) -> None:
    assert coco_config(tmp_path).options == {"curated_list": cocostuff.CURATED_LIST}
    assert potsdam_config(tmp_path).options == {"unlabelled_train": False}
    with pytest.raises(ValueError, match=r"unknown dataset.options \['curated'\] for the cocostuff27 source; "
                                         r"valid: \['curated_list'\]"):
        coco_config(tmp_path, options={"curated": "x"})
    with pytest.raises(ValueError, match=r"unknown dataset.options \['curated_list'\] for the cityscapes27 source; "
                                         r"valid: none"):
        city_config(tmp_path, options={"curated_list": "x"})
    cfg = DatasetConfig.from_params({"source": "potsdam3", "root": "r", "num_classes": 3,
                                     "options": {"unlabelled_train": True}}, seed=0)
    assert cfg.options == {"unlabelled_train": True}


def test_indexes_never_decode(coco, city, pots, monkeypatch: pytest.MonkeyPatch) -> None:
    """Indexing reads headers only: a pixel decode (PIL load, scipy loadmat) would fail here."""
    def no_decode(*args, **kwargs):
        raise AssertionError("an index decoded a file")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    monkeypatch.setattr(scipy.io, "loadmat", no_decode)
    assert len(build_index(coco_config(coco[0])).table) == 5
    assert len(build_index(city_config(city[0])).table) == 5
    assert len(build_index(potsdam_config(pots[0])).table) == 5


def test_root_missing(tmp_path: Path) -> None:
    for cfg in (coco_config(tmp_path / "x"), city_config(tmp_path / "x"), potsdam_config(tmp_path / "x")):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            build_index(cfg)


def test_unreadable_image_header(city) -> None:
    root, _ = city
    path = root / "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"
    path.write_bytes(b"not a png")
    with pytest.raises(BadFileError, match="unreadable image"):
        build_index(city_config(root))
    write_rgb(path, (48, 24), seed=0)
    assert len(build_index(city_config(root)).table) == 5
