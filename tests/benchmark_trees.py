"""Miniatures of the benchmark data sets in their official layouts, for the loader and environment tests.

Each builder writes a few small images and label files whose raw ids are realistic (classes and ids that must be
ignored), and returns the root plus the raw label array of every image id.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

# COCO-Stuff: stuffthingmaps values (fine id = labels.txt id - 1): person 0, car 2, banana 51, chair 61, tv 71,
# banner 91, grass 123, road 148, sky-other 156, wall-concrete 171, wood 181, unlabelled 255
COCO_RAW = (0, 2, 51, 61, 71, 91, 123, 148, 156, 171, 181, 255)
COCO_TRAIN = {"000000000009": (40, 30), "000000000025": (36, 48), "000000000030": (32, 32)}
COCO_VAL = {"000000000139": (44, 33), "000000000285": (30, 40)}
COCO_UNLISTED = "000000000042"  # in images/train2017 but not in the curated list

# Cityscapes labelIds: void ids (0 unlabeled, 1 ego vehicle, 3 out of roi, 4 static, 6 ground) and classes
# (7 road, 8 sidewalk, 11 building, 21 vegetation, 23 sky, 24 person, 26 car, 33 bicycle)
CITYSCAPES_RAW = (0, 1, 3, 4, 6, 7, 8, 11, 21, 23, 24, 26, 33)
CITYSCAPES_TRAIN = {"aachen": ("aachen_000000_000019", "aachen_000001_000019"), "bochum": ("bochum_000000_000313",)}
CITYSCAPES_VAL = {"frankfurt": ("frankfurt_000000_000294", "frankfurt_000000_000576")}
CITYSCAPES_SIZE = (48, 24)  # 2:1 like 2048x1024

# Potsdam: ISPRS ids 0 road, 1 building, 2 low vegetation, 3 tree, 4 car, 5 clutter
POTSDAM_RAW = (0, 1, 2, 3, 4, 5)
POTSDAM_LISTS = {"labelled_train": ("3054", "17", "6210"), "labelled_test": ("412", "7788"),
                 "unlabelled_train": ("905", "8000")}
POTSDAM_SIZE = 20


def raw_label(size: tuple[int, int], values: tuple[int, ...], seed: int) -> np.ndarray:
    """(H, W) uint8 of `values` in blocks of 4x4 pixels (regions, as in real maps), every value present."""
    width, height = size
    rng = np.random.default_rng(seed)
    blocks = rng.choice(np.array(values, dtype=np.uint8), ((height + 3) // 4, (width + 3) // 4))
    blocks.flat[:len(values)] = values[: blocks.size]
    return np.kron(blocks, np.ones((4, 4), np.uint8))[:height, :width]


def write_rgb(path: Path, size: tuple[int, int], seed: int) -> None:
    width, height = size
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def write_png_label(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label).save(path)  # uint8 (H, W) -> mode "L"


def make_cocostuff(root: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """images/{train2017,val2017}/<id>.jpg, annotations/<split>/<id>.png, curated/<split>/Coco164kFull_..._7.txt."""
    labels = {}
    for seed, (split, images) in enumerate((("train2017", COCO_TRAIN), ("val2017", COCO_VAL))):
        for n, (image_id, size) in enumerate(images.items()):
            write_rgb(root / "images" / split / f"{image_id}.jpg", size, seed=10 * seed + n)
            labels[image_id] = raw_label(size, COCO_RAW, seed=10 * seed + n)
            write_png_label(root / "annotations" / split / f"{image_id}.png", labels[image_id])
        listing = root / "curated" / split / "Coco164kFull_Stuff_Coarse_7.txt"
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text("".join(f"{image_id}\n" for image_id in images) + "\n")  # ends with a blank line
    write_rgb(root / "images" / "train2017" / f"{COCO_UNLISTED}.jpg", (20, 20), seed=99)
    write_png_label(root / "annotations" / "train2017" / f"{COCO_UNLISTED}.png", raw_label((20, 20), (0,), 0))
    return root, labels


def make_cityscapes(root: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """leftImg8bit/<split>/<city>/<id>_leftImg8bit.png, gtFine/<split>/<city>/<id>_gtFine_{labelIds,color}.png."""
    labels = {}
    for split, cities in (("train", CITYSCAPES_TRAIN), ("val", CITYSCAPES_VAL)):
        for city, ids in cities.items():
            for n, image_id in enumerate(ids):
                write_rgb(root / "leftImg8bit" / split / city / f"{image_id}_leftImg8bit.png", CITYSCAPES_SIZE, n)
                labels[image_id] = raw_label(CITYSCAPES_SIZE, CITYSCAPES_RAW, seed=n)
                gt = root / "gtFine" / split / city
                write_png_label(gt / f"{image_id}_gtFine_labelIds.png", labels[image_id])
                write_rgb(gt / f"{image_id}_gtFine_color.png", CITYSCAPES_SIZE, seed=n)  # never read
                (gt / f"{image_id}_gtFine_polygons.json").write_text("{}")
    return root, labels


def make_potsdam(root: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """imgs/<id>.mat ("img" (20, 20, 4) uint8 RGB-IR), gt/<id>.mat ("gt" (20, 20) int32), the three lists."""
    labels = {}
    size = (POTSDAM_SIZE, POTSDAM_SIZE)
    (root / "imgs").mkdir(parents=True)
    (root / "gt").mkdir()
    for n, (name, ids) in enumerate(POTSDAM_LISTS.items()):
        (root / f"{name}.txt").write_text("".join(f"{image_id}\n" for image_id in ids))
        for k, image_id in enumerate(ids):
            rng = np.random.default_rng(10 * n + k)
            rgbir = rng.integers(0, 256, (POTSDAM_SIZE, POTSDAM_SIZE, 4), dtype=np.uint8)
            scipy.io.savemat(root / "imgs" / f"{image_id}.mat", {"img": rgbir})
            if name != "unlabelled_train":
                labels[image_id] = raw_label(size, POTSDAM_RAW, seed=10 * n + k).astype(np.int32)
                scipy.io.savemat(root / "gt" / f"{image_id}.mat", {"gt": labels[image_id]})
    return root, labels
