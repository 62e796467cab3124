"""Potsdam-3: ISPRS Potsdam RGB crops with the 6 ISPRS classes merged into 3 (IIC [0], STEGO [1], PriMaPs [2]).

The crops IIC made [0] (`potsdam_prepare.py`): each 6000x6000 RGB-IR tile halved and cut into 15x15 crops of
200x200, saved as MATLAB files under random integer names, with three lists. Layout under dataset.root, as the STEGO
download (`potsdam.zip`) [1] ships it and the STEGO / PriMaPs loaders read it [2]:

    imgs/<id>.mat              array "img": (200, 200, 4) uint8, R G B IR (the infrared channel is not used)
    gt/<id>.mat                array "gt": (200, 200) integer ISPRS class ids (only for the 24 labelled tiles)
    labelled_train.txt         ids, one a line: 4,545 labelled crops for training
    labelled_test.txt          855 labelled crops for evaluation
    unlabelled_train.txt       3,150 crops of the 14 tiles without labels

dataset.splits names the list of each role (train: labelled_train, val: labelled_test, as the references);
dataset.options.unlabelled_train: true adds the unlabelled_train crops to the train split (then the train split has
no labels as a whole, so the supervised linear probe cannot run on it).

Label values: IIC wrote the ISPRS colours as 0 impervious surfaces (road), 1 building, 2 low vegetation, 3 tree,
4 car, 5 clutter [0]; Potsdam-3 merges {road, car} -> 0, {building, clutter} -> 1, {low vegetation, tree} -> 2 [1, 2].
The class names are the PriMaPs ones [2]: road, building, vegetation. 255 is accepted as unlabelled (the STEGO
loader maps it to ignore [1]); any other value is an unexpected id.

[0] https://github.com/xu-ji/IIC/blob/2f16a242014f39ba008827896fb859fb2ce5f7d9/code/datasets/segmentation/util/potsdam_prepare.py
[1] https://github.com/mhamilton723/STEGO/blob/009bc45038cd1b5833b0efd28d4c1bacb12e4ffd/src/data.py
    (download: src/download_datasets.py, `pytorch_data/potsdam.zip`)
[2] https://github.com/visinf/primaps/blob/7ca775793cd6241b849a16edaf76b6a876fd6db9/datasets/potsdam.py
"""

from __future__ import annotations

import os
from pathlib import Path

import scipy.io

from unseg.core.data.sources import (
    MAT_IMAGE_KEY,
    MAT_LABEL_KEY,
    SPLIT_ROLES,
    BadFileError,
    BadFiles,
    DatasetConfig,
    IndexResult,
    LabelMap,
    index_row,
    make_index,
    register_source,
)

NAME = "potsdam3"
CLASS_NAMES = ("road", "building", "vegetation")
# ISPRS class id in the gt files -> (ISPRS name, Potsdam-3 class)
ISPRS_CLASSES = (
    ("impervious surfaces", 0), ("building", 1), ("low vegetation", 2), ("tree", 2), ("car", 0), ("clutter", 1),
)
LABELS = LabelMap({isprs_id: coarse for isprs_id, (_, coarse) in enumerate(ISPRS_CLASSES)}, ignored=(255,))
LIST_NAMES = ("labelled_train", "labelled_test", "unlabelled_train")
UNLABELLED_LIST = "unlabelled_train"


def _mat_size(path: Path, key: str) -> tuple[int, int]:
    """(width, height) of the array `key` of a MATLAB file, from its header (the array is not read).

    Raises:
        OSError: the file is not a readable MATLAB v5 file, or has no array `key`.
    """
    try:
        arrays = {name: shape for name, shape, _ in scipy.io.whosmat(path)}
    except Exception as err:  # scipy raises IndexError, ValueError, MatReadError ... on broken files
        raise OSError(f"not a readable MATLAB v5 file ({err.__class__.__name__}: {err})") from err
    if key not in arrays:
        raise OSError(f"no array {key!r} (the file has {sorted(arrays)})")
    shape = arrays[key]
    if len(shape) < 2:
        raise OSError(f"array {key!r} has shape {shape}, not an image")
    return shape[1], shape[0]


def _image_size(path: Path) -> tuple[int, int]:
    return _mat_size(path, MAT_IMAGE_KEY)


def _label_size(path: Path) -> tuple[int, int]:
    return _mat_size(path, MAT_LABEL_KEY)


def _read_list(root: Path, name: str, what: str) -> tuple[list[str], Path]:
    if name not in LIST_NAMES:
        raise ValueError(f"{what} {name!r} is not a Potsdam split list; valid: {', '.join(LIST_NAMES)}")
    path = root / f"{name}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the {name} split list is missing ({what})")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise BadFileError(path, "empty split list")
    return ids, path


def index_potsdam(config: DatasetConfig) -> IndexResult:
    """Indexes the crops of the split lists and their gt files (MATLAB headers only).

    Raises:
        ValueError: a split names no Potsdam list, the val split is unlabelled, unlabelled_train is not a bool.
        FileNotFoundError: the root, imgs/ or gt/, or a split list is missing.
        BadFileError: an empty list or a split whose every crop was bad; with on_bad_file=raise, a listed crop or its
            gt missing, unreadable or of another size.
    """
    root = Path(config.root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist (dataset.root)")
    add_unlabelled = config.options["unlabelled_train"]
    if not isinstance(add_unlabelled, bool):
        raise ValueError(f"dataset.options.unlabelled_train must be true or false, got {add_unlabelled!r}")
    if config.splits["val"] == UNLABELLED_LIST:
        raise ValueError(f"dataset.splits.val {UNLABELLED_LIST!r} has no labels; evaluation needs labelled_test or "
                         f"labelled_train")
    image_dir, label_dir = root / "imgs", root / "gt"
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: the Potsdam {folder.name}/ folder is missing")
    with os.scandir(image_dir) as entries:
        images = {entry.name for entry in entries}
    with os.scandir(label_dir) as entries:
        labels = {entry.name for entry in entries}
    bad = BadFiles(config.on_bad_file)
    rows = []
    for role in SPLIT_ROLES:
        lists = [(config.splits[role], f"dataset.splits.{role}")]
        if role == "train" and add_unlabelled and config.splits["train"] != UNLABELLED_LIST:
            lists.append((UNLABELLED_LIST, "dataset.options.unlabelled_train"))
        for list_name, what in lists:
            ids, list_path = _read_list(root, list_name, what)
            for image_id in ids:
                image, label = image_dir / f"{image_id}.mat", label_dir / f"{image_id}.mat"
                if image.name not in images:
                    bad.report(image_id, image, f"missing image listed in {list_path}")
                    continue
                if list_name == UNLABELLED_LIST:
                    label = None
                elif label.name not in labels:
                    bad.report(image_id, label, f"missing label for image {image.name}")
                    continue
                row = index_row(bad, image_id, role, image, label, _image_size, _label_size)
                if row is not None:
                    rows.append(row)
        if not any(r[1] == role for r in rows):
            raise BadFileError(root / f"{config.splits[role]}.txt",
                               f"empty split, every crop of the {role} split was skipped as bad")
    return make_index(rows, bad.skipped, root)


register_source(NAME, index_potsdam, label_map=LABELS, options={"unlabelled_train": False},
                classes={"class_names": CLASS_NAMES})
