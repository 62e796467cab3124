"""Ingestion speed: preparing a split in this process against 1 and 2 decode worker processes.

Writes the synthetic source (`materialise_synthetic`, PNG scenes) at a COCO-like size (480 x 640 by default) in the
folder layout, indexes it, then times the whole prepare-and-write path (`PreparedImageStream` -> `write_store`) of the
train split at the papers' resolution (resize 320, crop 320) with num_workers 0 (this process: the reference), 1 and 2,
in this one run, alternating. Prints seconds (the fastest of `--repeats` runs: other load on the machine only ever adds
time) and images/s of each, the ratio 1 worker / 2 workers (the issue's target on 2 cores: >= 1.6) and the load
average around the runs, and checks that the three stores are the same, byte for byte.

Generating a scene costs ~4x what preparing it does, so only `--scenes` distinct scenes are generated and copied under
new names up to `--images`: every copy is a file of its own, opened and decoded like any other (all of them are in the
page cache after writing, as the originals would be; a cold disk would only add reading time, which workers also
overlap).

    .venv/bin/python bench/ingestion.py [--images 640] [--scenes 32] [--height 480] [--width 640] [--shard-size 32]
                                         [--repeats 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from unseg.core.data.prepare import PreparedImageStream
from unseg.core.data.sources import DatasetConfig, build_index, materialise_synthetic
from unseg.core.store import ShardStore, write_store

logger = logging.getLogger("bench.ingestion")
WORKERS = (0, 1, 2)


def source_tree(root: Path, images: int, scenes: int, height: int, width: int) -> Path:
    """The synthetic source with `scenes` train scenes, copied in the folder layout up to `images` train images."""
    generated = materialise_synthetic(DatasetConfig("synthetic", str(root / "synthetic"), num_classes=8, synthetic={
        "num_train": scenes, "num_val": 1, "height": height, "width": width}))
    folder = root / "folder"
    for kind in ("images", "labels"):
        shutil.copytree(generated / kind / "val", folder / kind / "val")
        originals = sorted((generated / kind / "train").iterdir())
        (folder / kind / "train").mkdir(parents=True)
        for n in range(images):
            shutil.copyfile(originals[n % len(originals)], folder / kind / "train" / f"{n:06d}.png")
    return folder


def store_bytes(root: Path) -> tuple[list[str], list[int], list[bytes]]:
    store = ShardStore(root)
    return store.ids, store.shard_counts, [a.tobytes() for s in store.iter_shards() for a in s.values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--scenes", type=int, default=32)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--size", type=int, default=320, help="resize and crop")
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        folder = source_tree(Path(tmp), args.images, args.scenes, args.height, args.width)
        config = DatasetConfig("folder", str(folder), num_classes=8, resize=args.size, crop=args.size)
        table = build_index(config).table
        table = table[table["split"] == "train"].reset_index(drop=True)
        # the forkserver starts once per process (~1 s: it imports pandas, scipy, PIL): not part of any one run
        list(PreparedImageStream(table.iloc[:1], config, num_workers=1).iter_shards([0]))
        times: dict[int, list[float]] = {n: [] for n in WORKERS}
        load = os.getloadavg()[0]
        for repeat in range(args.repeats):
            for n in WORKERS:  # alternate, so machine noise hits each alike
                out = Path(tmp) / f"store-{n}-{repeat}"
                stream = PreparedImageStream(table, config, args.shard_size, num_workers=n)
                start = time.perf_counter()
                write_store(stream, out, progress=False)
                times[n].append(time.perf_counter() - start)
        reference = store_bytes(Path(tmp) / "store-0-0")
        assert len(reference[0]) == args.images
        for n in WORKERS[1:]:
            assert store_bytes(Path(tmp) / f"store-{n}-0") == reference, f"{n} workers made another store"
        best = {n: min(t) for n, t in times.items()}
        for n in WORKERS:
            logger.info("num_workers %d: %6.2f s, %6.1f images/s (%d images %dx%d -> %d, shards of %d; runs %s)", n,
                        best[n], args.images / best[n], args.images, args.height, args.width, args.size,
                        args.shard_size, ", ".join(f"{t:.2f}" for t in times[n]))
        logger.info("2 workers vs 1: %.2fx faster; 2 workers vs in-process: %.2fx; stores identical: yes",
                    best[1] / best[2], best[0] / best[2])
        logger.info("%d CPUs usable; load average (1 min) %.1f before the runs, %.1f after",
                    len(os.sched_getaffinity(0)), load, os.getloadavg()[0])


if __name__ == "__main__":
    main()
