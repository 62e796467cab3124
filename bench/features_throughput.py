"""Feature extraction throughput: the full FeatureStream -> store path against the bare backbone forward.

Both run in this process on the same pre-decoded images (a prepared store of synthetic scenes), alternating, so machine
noise hits both alike. Prints images/s of each and the ratio ours / bare (1.0 = no overhead; target >= 0.9 on CPU).

    .venv/bin/python bench/features_throughput.py [--images 256] [--size 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from unseg.core.backbones import create_backbone
from unseg.core.data.synthetic import SyntheticConfig, iter_split
from unseg.core.features import FeatureStream, images_to_tensor
from unseg.core.store import FieldSpec, Shard, ShardStore, write_store

logger = logging.getLogger("bench.features")


class _Images:
    """A prepared-image stream of synthetic scenes cropped to size x size."""

    def __init__(self, count: int, size: int, shard_size: int) -> None:
        config = SyntheticConfig(num_train=count, num_val=1, height=size, width=size)
        self.items = [(i, img) for i, img, _ in iter_split(config, "train")]
        self.fields = {"image": FieldSpec("uint8", (size, size, 3))}
        self.attrs: dict[str, object] = {"split": "train"}
        self.fingerprint = f"bench-{count}-{size}"
        self.shard_size = shard_size
        self.num_shards = (count + shard_size - 1) // shard_size

    def iter_shards(self, todo: list[int]):  # noqa: ANN201 - protocol
        for index in todo:
            chunk = self.items[index * self.shard_size:(index + 1) * self.shard_size]
            yield Shard(index, [i for i, _ in chunk], {"image": np.stack([img for _, img in chunk])})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)
    device = torch.device("cpu")
    backbone = create_backbone(args.backbone).to(device)

    with tempfile.TemporaryDirectory() as tmp:
        write_store(_Images(args.images, args.size, 64), Path(tmp) / "images", progress=False)
        images = ShardStore(Path(tmp) / "images")
        decoded = np.concatenate([np.asarray(s["image"]) for s in images.iter_shards()])

        def bare() -> float:
            start = time.perf_counter()
            with torch.inference_mode():
                for b in range(0, len(decoded), args.batch):
                    backbone(images_to_tensor(decoded[b:b + args.batch], device))
            return len(decoded) / (time.perf_counter() - start)

        def ours(run: int) -> float:
            stream = FeatureStream(images, backbone, device, args.batch, f"bench-{run}")
            start = time.perf_counter()
            write_store(stream, Path(tmp) / f"feat-{run}", progress=False)
            return len(decoded) / (time.perf_counter() - start)

        bare()  # warm-up (allocator, thread pool)
        rates_bare, rates_ours = [], []
        for run in range(args.repeats):
            rates_bare.append(bare())
            rates_ours.append(ours(run))
    b, o = statistics.median(rates_bare), statistics.median(rates_ours)
    logger.info("backbone %s, %d images of %dpx, batch %d, %d threads, %d repeats (median)", args.backbone,
                args.images, args.size, args.batch, torch.get_num_threads(), args.repeats)
    logger.info("bare forward          : %8.1f img/s", b)
    logger.info("FeatureStream + store : %8.1f img/s", o)
    logger.info("ratio ours / bare     : %8.3f", o / b)


if __name__ == "__main__":
    main()
