"""Cityscapes-27: the Cityscapes fine annotations with label ids 7..33 as 27 classes (PiCIE [0], PriMaPs [1]).

Layout under dataset.root, as distributed (leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip) and read by
torchvision's `Cityscapes` (which the PriMaPs loader [1] wraps):

    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png   (other gtFine files are not read)

The split folders are dataset.splits (train: 2,975 images in 18 cities, val: 500 in 3). An image's id is
`<city>_<seq>_<frame>`.

Label values: the labelIds PNGs hold the official label ids [2] 0..33 (0-6 are void: unlabeled, ego vehicle,
rectification border, out of roi, static, dynamic, ground). Ids 7..33 become classes 0..26 in that order, everything
else is ignored. License plate has id -1 and is never drawn into labelIds (cityscapesScripts json2labelImg skips
negative ids); -1, and 255 (where -1 was stored as uint8), are accepted as ignored all the same. Any other value is an
unexpected id (a trainIds or colour file put in place of labelIds, for example).

[0] https://arxiv.org/abs/2103.17070
[1] https://github.com/visinf/primaps/blob/7ca775793cd6241b849a16edaf76b6a876fd6db9/datasets/cityscapes.py
[2] https://github.com/mcordts/cityscapesScripts/blob/master/cityscapesscripts/helpers/labels.py
"""

from __future__ import annotations

import os
from pathlib import Path

from unseg.core.data.sources import (
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

NAME = "cityscapes27"
# the official label table [2]: label id -> name, 0..33 (license plate, id -1, is not drawn into labelIds files)
LABEL_NAMES = (
    "unlabeled", "ego vehicle", "rectification border", "out of roi", "static", "dynamic", "ground",
    "road", "sidewalk", "parking", "rail track", "building", "wall", "fence", "guard rail", "bridge", "tunnel",
    "pole", "polegroup", "traffic light", "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "caravan", "trailer", "train", "motorcycle", "bicycle",
)
FIRST_CLASS_ID = 7
CLASS_NAMES = LABEL_NAMES[FIRST_CLASS_ID:]
LABELS = LabelMap({label_id: label_id - FIRST_CLASS_ID for label_id in range(FIRST_CLASS_ID, len(LABEL_NAMES))},
                  ignored=(-1, *range(FIRST_CLASS_ID), 255))
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def _split_dirs(root: Path, split: str, role: str) -> tuple[Path, Path]:
    image_root, label_root = root / "leftImg8bit" / split, root / "gtFine" / split
    for folder in (image_root, label_root):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: the {role} split folder is missing")
    return image_root, label_root


def _names(folder: Path, suffix: str) -> list[str]:
    """Sorted names of the files in `folder` ending in `suffix` (none where the folder is missing)."""
    if not folder.is_dir():
        return []
    with os.scandir(folder) as entries:
        return sorted(entry.name for entry in entries if entry.name.endswith(suffix) and entry.is_file())


def index_cityscapes(config: DatasetConfig) -> IndexResult:
    """Indexes every city of both splits and their gtFine labelIds (headers only).

    Raises:
        FileNotFoundError: the root or a split folder of leftImg8bit or gtFine is missing.
        BadFileError: a split without city folders, or whose every image was bad; with on_bad_file=raise, a city
            folder without images, or an image whose label is missing, unreadable or of another size.
    """
    root = Path(config.root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist (dataset.root)")
    bad = BadFiles(config.on_bad_file)
    rows = []
    for role in SPLIT_ROLES:
        image_root, label_root = _split_dirs(root, config.splits[role], role)
        cities = sorted(p for p in image_root.iterdir() if p.is_dir())
        if not cities:
            raise BadFileError(image_root, f"empty split, no city folders in the {role} split")
        for city in cities:
            images = _names(city, IMAGE_SUFFIX)
            if not images:
                bad.report(city.name, city, f"city folder without *{IMAGE_SUFFIX} images")
                continue
            labels = set(_names(label_root / city.name, LABEL_SUFFIX))
            for name in images:
                image_id = name[:-len(IMAGE_SUFFIX)]
                label = label_root / city.name / f"{image_id}{LABEL_SUFFIX}"
                if label.name not in labels:
                    bad.report(image_id, label, f"missing label for image {name}")
                elif (row := index_row(bad, image_id, role, city / name, label)) is not None:
                    rows.append(row)
        if not any(r[1] == role for r in rows):
            raise BadFileError(image_root, f"empty split, every image of the {role} split was skipped as bad")
    return make_index(rows, bad.skipped, root)


register_source(NAME, index_cityscapes, label_map=LABELS, classes={"class_names": CLASS_NAMES})
