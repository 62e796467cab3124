"""COCO-Stuff-27: COCO 2017 images, the stuffthingmaps fine labels merged into the 27 COCO-Stuff super-categories.

The benchmark of IIC [2], PiCIE [0] and PriMaPs [1]: a curated subset of COCO 2017 (49,629 train / 2,175 val
images). Layout under dataset.root, as the reference loaders read it (PriMaPs `datasets/cocostuff.py` [1]; the
curated lists from IIC `datasets/README.txt` [2]):

    images/train2017/<id>.jpg, images/val2017/<id>.jpg   COCO 2017 images (train2017.zip, val2017.zip)
    annotations/train2017/<id>.png, .../val2017/<id>.png  stuffthingmaps_trainval2017.zip (uint8, one value a pixel)
    curated/train2017/Coco164kFull_Stuff_Coarse_7.txt     curated image ids, one a line (the file name stem)
    curated/val2017/Coco164kFull_Stuff_Coarse_7.txt

The split folders are dataset.splits (train2017 / val2017); dataset.options.curated_list is the list path, relative
to the root or absolute, with `{split}` standing for the split folder; null indexes every image of the folder (full
COCO-Stuff, not the 27-class benchmark).

Label values: a stuffthingmaps pixel holds the COCO-Stuff label id minus one (labels.txt [3]: 1 person ... 91 hair
brush are things, 92 banner ... 182 wood are stuff), so 0-181, and 255 where unlabelled (label 0). `FINE_CLASSES`
lists all 182 with their super-category from the COCO-Stuff hierarchy [4]; the 27 classes are those
super-categories in the order the reference code uses (things 0-11, stuff 12-26, each alphabetical). Fine ids
12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91 (label ids 12 street sign ... 91 hair brush, removed from COCO) never
occur in the maps but keep their super-category. food and furniture exist as things and as stuff: their names carry
"-things" / "-stuff" so that every class name is unique (metric names are built from them).

[0] https://arxiv.org/abs/2103.17070
[1] https://github.com/visinf/primaps/tree/7ca775793cd6241b849a16edaf76b6a876fd6db9
[2] https://github.com/xu-ji/IIC/blob/2f16a242014f39ba008827896fb859fb2ce5f7d9/datasets/README.txt
[3] https://github.com/nightrome/cocostuff/blob/cad94560af961375160d9e9e55a1612bc319cd5b/labels.txt
[4] https://github.com/nightrome/cocostuff#labels (cocostuffhierarchy.json; also IIC
    code/datasets/segmentation/util/cocostuff_hierarchy.y at 2f16a24)
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

NAME = "cocostuff27"
CLASS_NAMES = (
    "electronic", "appliance", "food-things", "furniture-things", "indoor", "kitchen", "accessory", "animal",
    "outdoor", "person", "sports", "vehicle",
    "ceiling", "floor", "food-stuff", "furniture-stuff", "rawmaterial", "textile", "wall", "window", "building",
    "ground", "plant", "sky", "solid", "structural", "water",
)
THING_CLASSES = tuple(range(12))
STUFF_CLASSES = tuple(range(12, 27))
CURATED_LIST = "curated/{split}/Coco164kFull_Stuff_Coarse_7.txt"

# fine id (stuffthingmaps value = labels.txt id - 1) -> (label name, super-category = class name)
FINE_CLASSES: tuple[tuple[str, str], ...] = (
    # things: labels.txt 1-91
    ("person", "person"), ("bicycle", "vehicle"), ("car", "vehicle"), ("motorcycle", "vehicle"),
    ("airplane", "vehicle"), ("bus", "vehicle"), ("train", "vehicle"), ("truck", "vehicle"), ("boat", "vehicle"),
    ("traffic light", "outdoor"), ("fire hydrant", "outdoor"), ("street sign", "outdoor"), ("stop sign", "outdoor"),
    ("parking meter", "outdoor"), ("bench", "outdoor"),
    ("bird", "animal"), ("cat", "animal"), ("dog", "animal"), ("horse", "animal"), ("sheep", "animal"),
    ("cow", "animal"), ("elephant", "animal"), ("bear", "animal"), ("zebra", "animal"), ("giraffe", "animal"),
    ("hat", "accessory"), ("backpack", "accessory"), ("umbrella", "accessory"), ("shoe", "accessory"),
    ("eye glasses", "accessory"), ("handbag", "accessory"), ("tie", "accessory"), ("suitcase", "accessory"),
    ("frisbee", "sports"), ("skis", "sports"), ("snowboard", "sports"), ("sports ball", "sports"), ("kite", "sports"),
    ("baseball bat", "sports"), ("baseball glove", "sports"), ("skateboard", "sports"), ("surfboard", "sports"),
    ("tennis racket", "sports"),
    ("bottle", "kitchen"), ("plate", "kitchen"), ("wine glass", "kitchen"), ("cup", "kitchen"), ("fork", "kitchen"),
    ("knife", "kitchen"), ("spoon", "kitchen"), ("bowl", "kitchen"),
    ("banana", "food-things"), ("apple", "food-things"), ("sandwich", "food-things"), ("orange", "food-things"),
    ("broccoli", "food-things"), ("carrot", "food-things"), ("hot dog", "food-things"), ("pizza", "food-things"),
    ("donut", "food-things"), ("cake", "food-things"),
    ("chair", "furniture-things"), ("couch", "furniture-things"), ("potted plant", "furniture-things"),
    ("bed", "furniture-things"), ("mirror", "furniture-things"), ("dining table", "furniture-things"),
    ("window", "furniture-things"), ("desk", "furniture-things"), ("toilet", "furniture-things"),
    ("door", "furniture-things"),
    ("tv", "electronic"), ("laptop", "electronic"), ("mouse", "electronic"), ("remote", "electronic"),
    ("keyboard", "electronic"), ("cell phone", "electronic"),
    ("microwave", "appliance"), ("oven", "appliance"), ("toaster", "appliance"), ("sink", "appliance"),
    ("refrigerator", "appliance"), ("blender", "appliance"),
    ("book", "indoor"), ("clock", "indoor"), ("vase", "indoor"), ("scissors", "indoor"), ("teddy bear", "indoor"),
    ("hair drier", "indoor"), ("toothbrush", "indoor"), ("hair brush", "indoor"),
    # stuff: labels.txt 92-182
    ("banner", "textile"), ("blanket", "textile"), ("branch", "plant"), ("bridge", "building"),
    ("building-other", "building"), ("bush", "plant"), ("cabinet", "furniture-stuff"), ("cage", "structural"),
    ("cardboard", "rawmaterial"), ("carpet", "floor"), ("ceiling-other", "ceiling"), ("ceiling-tile", "ceiling"),
    ("cloth", "textile"), ("clothes", "textile"), ("clouds", "sky"), ("counter", "furniture-stuff"),
    ("cupboard", "furniture-stuff"), ("curtain", "textile"), ("desk-stuff", "furniture-stuff"), ("dirt", "ground"),
    ("door-stuff", "furniture-stuff"), ("fence", "structural"), ("floor-marble", "floor"), ("floor-other", "floor"),
    ("floor-stone", "floor"), ("floor-tile", "floor"), ("floor-wood", "floor"), ("flower", "plant"),
    ("fog", "water"), ("food-other", "food-stuff"), ("fruit", "food-stuff"), ("furniture-other", "furniture-stuff"),
    ("grass", "plant"), ("gravel", "ground"), ("ground-other", "ground"), ("hill", "solid"), ("house", "building"),
    ("leaves", "plant"), ("light", "furniture-stuff"), ("mat", "textile"), ("metal", "rawmaterial"),
    ("mirror-stuff", "furniture-stuff"), ("moss", "plant"), ("mountain", "solid"), ("mud", "ground"),
    ("napkin", "textile"), ("net", "structural"), ("paper", "rawmaterial"), ("pavement", "ground"),
    ("pillow", "textile"), ("plant-other", "plant"), ("plastic", "rawmaterial"), ("platform", "ground"),
    ("playingfield", "ground"), ("railing", "structural"), ("railroad", "ground"), ("river", "water"),
    ("road", "ground"), ("rock", "solid"), ("roof", "building"), ("rug", "textile"), ("salad", "food-stuff"),
    ("sand", "ground"), ("sea", "water"), ("shelf", "furniture-stuff"), ("sky-other", "sky"),
    ("skyscraper", "building"), ("snow", "ground"), ("solid-other", "solid"), ("stairs", "furniture-stuff"),
    ("stone", "solid"), ("straw", "plant"), ("structural-other", "structural"), ("table", "furniture-stuff"),
    ("tent", "building"), ("textile-other", "textile"), ("towel", "textile"), ("tree", "plant"),
    ("vegetable", "food-stuff"), ("wall-brick", "wall"), ("wall-concrete", "wall"), ("wall-other", "wall"),
    ("wall-panel", "wall"), ("wall-stone", "wall"), ("wall-tile", "wall"), ("wall-wood", "wall"),
    ("water-other", "water"), ("waterdrops", "water"), ("window-blind", "window"), ("window-other", "window"),
    ("wood", "solid"),
)
UNLABELLED = 255
FINE_TO_COARSE = {fine: CLASS_NAMES.index(coarse) for fine, (_, coarse) in enumerate(FINE_CLASSES)}
LABELS = LabelMap(FINE_TO_COARSE, ignored=(UNLABELLED,))


def _file_names(folder: Path) -> set[str]:
    """Names of the files in `folder`: one directory listing instead of a stat per image."""
    with os.scandir(folder) as entries:
        return {entry.name for entry in entries}


def _curated_ids(config: DatasetConfig, root: Path, split: str, role: str, image_dir: Path
                 ) -> tuple[list[str], Path]:
    """Image ids of a split: from its curated list, or every .jpg of the image folder when curated_list is null."""
    template = config.options["curated_list"]
    if template is None:
        return sorted(name[:-4] for name in _file_names(image_dir) if name.lower().endswith(".jpg")), image_dir
    if not isinstance(template, str):
        raise ValueError(f"dataset.options.curated_list must be a path (with {{split}}) or null, got {template!r}")
    path = Path(template.replace("{split}", split))
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the curated image list of the {role} split is missing "
                                f"(dataset.options.curated_list {template!r})")
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line[:-4] if line.lower().endswith(".jpg") else line for line in lines if line], path


def index_cocostuff(config: DatasetConfig) -> IndexResult:
    """Indexes the curated images of both splits and their stuffthingmaps labels (headers only).

    Raises:
        FileNotFoundError: the root, an image or annotation folder, or a curated list is missing.
        BadFileError: an empty list or split; with on_bad_file=raise, a listed image or its label missing,
            unreadable or of another size.
    """
    root = Path(config.root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist (dataset.root)")
    bad = BadFiles(config.on_bad_file)
    rows = []
    for role in SPLIT_ROLES:
        split = config.splits[role]
        image_dir, label_dir = root / "images" / split, root / "annotations" / split
        for folder, what in ((image_dir, "image"), (label_dir, "stuffthingmaps annotation")):
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder}: the {what} folder of the {role} split is missing")
        ids, listed_in = _curated_ids(config, root, split, role, image_dir)
        if not ids:
            raise BadFileError(listed_in, f"empty split, no image ids for the {role} split")
        images, labels = _file_names(image_dir), _file_names(label_dir)
        for image_id in ids:
            image, label = image_dir / f"{image_id}.jpg", label_dir / f"{image_id}.png"
            if image.name not in images:
                bad.report(image_id, image, f"missing image listed in {listed_in}")
            elif label.name not in labels:
                bad.report(image_id, label, f"missing label for image {image.name}")
            elif (row := index_row(bad, image_id, role, image, label)) is not None:
                rows.append(row)
        if not any(r[1] == role for r in rows):
            raise BadFileError(listed_in, f"empty split, every image of the {role} split was skipped as bad")
    return make_index(rows, bad.skipped, root)


register_source(NAME, index_cocostuff, label_map=LABELS, options={"curated_list": CURATED_LIST},
                classes={"class_names": CLASS_NAMES, "thing_classes": THING_CLASSES, "stuff_classes": STUFF_CLASSES})
