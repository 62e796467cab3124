"""Index build speed of the benchmark sources against bare header reads of the same files.

Writes a COCO-Stuff tree (images/, annotations/, curated lists) and a Potsdam tree (imgs/, gt/, lists) of tiny
files, then times `build_index` against a bare loop that opens every image and label header once (PIL for the PNG /
JPEG pair, scipy whosmat for the .mat pair): the least any index that checks sizes must do. Prints files/s of each,
the ratio ours / bare (1.0 = no overhead) and the time the full set would take at that rate (COCO-Stuff-27: 51,804
curated images; Potsdam-3: 5,400 labelled crops). Real files on a local disk read headers at about the same rate
(a header is the first few hundred bytes); network file systems are slower for both alike.

    .venv/bin/python bench/index_speed.py [--images 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from unseg.core.data.sources import DatasetConfig, build_index

logger = logging.getLogger("bench.index")
FULL = {"cocostuff27": 49_629 + 2_175, "potsdam3": 4_545 + 855}


def coco_tree(root: Path, count: int) -> list[tuple[Path, Path]]:
    pairs = []
    rng = np.random.default_rng(0)
    for role, split in (("train", "train2017"), ("val", "val2017")):
        n = count - count // 10 if role == "train" else count // 10
        ids = [f"{i:012d}" for i in range(n)] if role == "train" else [f"{10**9 + i:012d}" for i in range(n)]
        for folder in ("images", "annotations", "curated"):
            (root / folder / split).mkdir(parents=True)
        for image_id in ids:
            image, label = root / "images" / split / f"{image_id}.jpg", root / "annotations" / split / f"{image_id}.png"
            Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(image)
            Image.fromarray(rng.integers(0, 182, (12, 16), dtype=np.uint8)).save(label)
            pairs.append((image, label))
        (root / "curated" / split / "Coco164kFull_Stuff_Coarse_7.txt").write_text("\n".join(ids) + "\n")
    return pairs


def potsdam_tree(root: Path, count: int) -> list[tuple[Path, Path]]:
    pairs = []
    rng = np.random.default_rng(0)
    (root / "imgs").mkdir(parents=True)
    (root / "gt").mkdir()
    lists = {"labelled_train": range(count - count // 10), "labelled_test": range(count - count // 10, count)}
    for name, ids in lists.items():
        (root / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
        for i in ids:
            image, label = root / "imgs" / f"{i}.mat", root / "gt" / f"{i}.mat"
            scipy.io.savemat(image, {"img": rng.integers(0, 256, (20, 20, 4), dtype=np.uint8)})
            scipy.io.savemat(label, {"gt": rng.integers(0, 6, (20, 20), dtype=np.int32)})
            pairs.append((image, label))
    return pairs


def bare_pil(pairs: list[tuple[Path, Path]]) -> None:
    for image, label in pairs:
        with Image.open(image) as img, Image.open(label) as lab:
            assert img.size == lab.size


def bare_whosmat(pairs: list[tuple[Path, Path]]) -> None:
    for image, label in pairs:
        assert scipy.io.whosmat(image)[0][1][:2] == scipy.io.whosmat(label)[0][1]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        cases = [
            ("cocostuff27", coco_tree, bare_pil, {"num_classes": 27, "splits": {"train": "train2017",
                                                                              "val": "val2017"}}),
            ("potsdam3", potsdam_tree, bare_whosmat, {"num_classes": 3, "splits": {"train": "labelled_train",
                                                                                  "val": "labelled_test"}}),
        ]
        for source, make, bare, params in cases:
            root = Path(tmp) / source
            pairs = make(root, args.images)
            config = DatasetConfig(source=source, root=str(root), **params)
            ours, base = [], []
            for _ in range(args.repeats):  # alternate, so machine noise hits both alike
                ours.append(timed(lambda config=config: build_index(config)))
                base.append(timed(lambda pairs=pairs, bare=bare: bare(pairs)))
            t_ours, t_base = statistics.median(ours), statistics.median(base)
            logger.info("%-12s %5d images: index %6.0f images/s, bare headers %6.0f images/s, ratio ours/bare %.2f; "
                        "full set (%d) at this rate: %.1f s", source, len(pairs), len(pairs) / t_ours,
                        len(pairs) / t_base, t_base / t_ours, FULL[source], FULL[source] * t_ours / len(pairs))


if __name__ == "__main__":
    main()
