"""PiCIE epoch on the embedded data, on the CPU: where the time goes, and what the sampled k-means saves in memory.

1. One epoch with the parameters of conf/base/parameters/picie.yml on synthetic scenes prepared like the embedded
   default (600 images of 128 px): seconds spent in the clustering pass (both views), the label pass and training,
   printed with each phase's share of the epoch.
2. Peak memory of one view's initial k-means step, ours (a sample of `sample_size` pixel features drawn batch by batch
   from the first `init_batches` batches) against the reference approach (every pixel feature of those batches held
   and clustered), on the same features, each in a fresh process (peak RSS above the process's RSS before the
   step, after a warm-up of faiss / BLAS / torch, from /proc/self/status), printed as a ratio reference / ours,
   with the k-means time ratio. Both read the features batch by batch from disk, as they would come from the
   network; ours holds one batch and the sample, the reference every batch.

    .venv/bin/python bench/picie_epoch.py [--images 600] [--skip-epoch]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from unseg.core.data.prepare import resize_crop
from unseg.core.data.synthetic import SyntheticConfig, iter_split
from unseg.core.picie import ClusterConfig, LossConfig, NetworkConfig, TrainConfig, ViewConfig, build_network
from unseg.core.picie.clustering import cluster_entropy
from unseg.core.picie.inference import ImageSource
from unseg.core.picie.loss import class_weights
from unseg.core.picie.train import EpochContext, cluster_views, label_views, train_views
from unseg.core.picie.views import draw_view_params, view_input
from unseg.core.store import FieldSpec, Shard, ShardStore, write_store

logger = logging.getLogger("bench.picie")
PARAMS = Path(__file__).resolve().parents[1] / "conf/base/parameters/picie.yml"

# Runs in a fresh interpreter: one k-means step over the init batches of a saved feature file, prints JSON.
_STEP = r"""
import json, sys, time
import numpy as np, torch
from unseg.core.picie.clustering import ClusterConfig, cluster_view, flatten_pixels
from unseg.core.kmeans import KMeansConfig, fit_kmeans

def rss_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])

folder, mode, k, iters, sample, batch = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
files = sorted(__import__("pathlib").Path(folder).glob("batch_*.npy"))  # one (B, D, h, w) float32 file per batch
num_batches = len(files)

def load(b):  # a plain read (a memory map would count the file's pages in the RSS)
    return torch.from_numpy(np.load(files[b]))

# warm-up: faiss / BLAS / torch allocate their thread buffers on first use; not part of either approach
first = load(0)
warm = np.random.default_rng(0).standard_normal((40 * k, first.shape[1])).astype(np.float32)
fit_kmeans(warm, KMeansConfig(num_clusters=k, metric="cosine", num_iters=2, num_redo=1, sample_size=len(warm)))
flatten_pixels(first[:1])
del first
before = rss_kb("VmRSS")
start = time.perf_counter()
if mode == "ours":
    config = ClusterConfig(num_clusters=k, num_iters=iters, sample_size=sample, init_batches=num_batches,
                           batch_size=batch)
    cluster_view((load(b) for b in range(num_batches)), num_batches, config, seed=0)
else:  # the reference: hold every pixel feature of the init batches, then cluster them all
    held = [flatten_pixels(load(b)) for b in range(num_batches)]
    vectors = torch.cat(held).numpy()
    del held
    fit_kmeans(vectors, KMeansConfig(num_clusters=k, metric="cosine", num_iters=iters, num_redo=1,
                                     sample_size=len(vectors), seed=0))
elapsed = time.perf_counter() - start
print(json.dumps({"peak_kb": rss_kb("VmHWM") - before, "seconds": elapsed}))
"""


class _Scenes:
    """Prepared-store stream of the embedded default's train scenes (144 x 176, shorter side to `side`, centre
    crop), images only, 64 per shard."""

    def __init__(self, count: int, side: int) -> None:
        config = SyntheticConfig(num_train=count, num_val=1, height=144, width=176)
        self.items = [(i, resize_crop(img, side, side, nearest=False)) for i, img, _ in iter_split(config, "train")]
        self.fields = {"image": FieldSpec("uint8", (side, side, 3))}
        self.attrs: dict[str, Any] = {"split": "train"}
        self.fingerprint = f"bench-{count}-{side}"
        self.num_shards = math.ceil(count / 64)

    def iter_shards(self, todo: list[int]):  # noqa: ANN201 - ArrayStream protocol
        for index in todo:
            chunk = self.items[index * 64:(index + 1) * 64]
            yield Shard(index, [i for i, _ in chunk], {"image": np.stack([img for _, img in chunk])})


def _configs(num_classes: int) -> dict[str, Any]:
    params = yaml.safe_load(PARAMS.read_text())["picie"]
    clustering = dict(params["clustering"], num_clusters=params["clustering"]["num_clusters"] or num_classes)
    return {"network": NetworkConfig(**params["network"]),
            "views": ViewConfig(**params["views"]), "clustering": ClusterConfig(**clustering),
            "loss": LossConfig(**params["loss"]),
            "train": TrainConfig(**{**params["train"], "checkpoint_dir": None, "progress": False})}


def epoch_split(store: ShardStore, cfg: dict[str, Any]) -> tuple[dict[str, float], EpochContext]:
    net, _ = build_network(cfg["network"], seed=0)
    ctx = EpochContext(net, torch.optim.Adam(net.parameters(), lr=cfg["train"].lr), ImageSource(store),
                       cfg["views"], cfg["clustering"], cfg["loss"], cfg["train"], 0, torch.device("cpu"), None)
    params = draw_view_params(cfg["views"], 0, 1, np.arange(len(store)))
    times = {}
    start = time.perf_counter()
    cache = ctx.feature_cache()  # as the pipeline does: None when clustering.cache_mb is too small
    results = cluster_views(ctx, 1, params, cache)
    times["clustering"] = time.perf_counter() - start
    centroids = [torch.from_numpy(r.centroids) for r in results]
    start = time.perf_counter()
    labels = label_views(ctx, 1, params, centroids, cache)
    times["label pass"] = time.perf_counter() - start
    if cache is not None:  # the reference's label pass runs the network again: the baseline, same process
        start = time.perf_counter()
        again = label_views(ctx, 1, params, centroids)
        recompute = time.perf_counter() - start
        logger.info("label pass from the clustering features: %.1f s, running the network again (the reference): "
                    "%.1f s, ratio %.1fx; labels agree on %.4f of the pixels", times["label pass"], recompute,
                    recompute / times["label pass"], float(np.mean(labels == again)))
    del cache
    counts = [np.bincount(labels[v].ravel(), minlength=cfg["clustering"].num_clusters) for v in (0, 1)]
    weights = [class_weights(c, cfg["loss"].class_weights) for c in counts]
    start = time.perf_counter()
    losses = train_views(ctx, 1, params, labels, centroids, weights)
    times["training"] = time.perf_counter() - start
    logger.info("epoch loss %.4f (within %.4f, cross %.4f), cluster-size entropy %.3f", *losses,
                np.mean([cluster_entropy(c) for c in counts]))
    return times, ctx


@torch.no_grad()
def dump_init_features(ctx: EpochContext, folder: Path) -> int:
    """View-1 features of the first init_batches batches, one float32 .npy per batch; returns the image count."""
    cfg = ctx.clustering
    count = min(len(ctx.source), cfg.init_batches * cfg.batch_size)
    params = draw_view_params(ctx.views, 0, 1, np.arange(count))
    ctx.net.eval()
    folder.mkdir(parents=True, exist_ok=True)
    for index, start in enumerate(range(0, count, cfg.batch_size)):
        rows = np.arange(start, min(start + cfg.batch_size, count))
        feats = ctx.net(view_input(ctx.source.batch(rows, ctx.device), params.subset(rows), 0, ctx.views))
        np.save(folder / f"batch_{index:04d}.npy", feats.numpy().astype(np.float32))
    return count


def kmeans_step(folder: Path, mode: str, cfg: ClusterConfig) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", _STEP, str(folder), mode, str(cfg.num_clusters), str(cfg.num_iters),
                          str(cfg.sample_size), str(cfg.batch_size)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--side", type=int, default=128)
    parser.add_argument("--num-classes", type=int, default=8)
    parser.add_argument("--skip-epoch", action="store_true", help="only the memory comparison")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = _configs(args.num_classes)
    with tempfile.TemporaryDirectory() as tmp:
        write_store(_Scenes(args.images, args.side), Path(tmp) / "images", progress=False)
        store = ShardStore(Path(tmp) / "images")
        if args.skip_epoch:
            net, _ = build_network(cfg["network"], seed=0)  # the configured init, so features are realistic
            ctx = EpochContext(net, torch.optim.Adam(net.parameters()), ImageSource(store), cfg["views"],
                               cfg["clustering"], cfg["loss"], cfg["train"], 0, torch.device("cpu"), None)
        else:
            times, ctx = epoch_split(store, cfg)
            total = sum(times.values())
            logger.info("one epoch, %d images of %d px, input %d, %d threads: %.1f s", args.images, args.side,
                        cfg["views"].input_size, torch.get_num_threads(), total)
            for name, seconds in times.items():
                logger.info("  %-11s %7.1f s  %5.1f %% of the epoch  (%.1f img/s)", name, seconds,
                            100 * seconds / total, (1 if name == "training" else 2) * args.images / seconds)
        count = dump_init_features(ctx, Path(tmp) / "init_feats")
        ours = kmeans_step(Path(tmp) / "init_feats", "ours", cfg["clustering"])
        reference = kmeans_step(Path(tmp) / "init_feats", "reference", cfg["clustering"])
    c = cfg["clustering"]
    grid = cfg["views"].input_size // 4
    logger.info("initial k-means of one view over the first %d batches (%d images, %d pixel features of %d-d):",
                c.init_batches, count, count * grid * grid, ctx.net.dim)
    logger.info("  reference (all pixels)  : peak +%7.1f MB, %6.2f s", reference["peak_kb"] / 1024,
                reference["seconds"])
    logger.info("  ours (sample of %6d) : peak +%7.1f MB, %6.2f s", c.sample_size, ours["peak_kb"] / 1024,
                ours["seconds"])
    logger.info("  ratio reference / ours  : memory %.1fx, time %.1fx", reference["peak_kb"] / max(ours["peak_kb"], 1),
                reference["seconds"] / max(ours["seconds"], 1e-9))
    paper = 20 * 256 * 80 * 80
    logger.info("  at the paper's scale (20 batches x 256 images x 80 x 80 = %d vectors of 128-d): the reference "
                "holds %.1f GB of features, the sample %.1f MB", paper, paper * 128 * 4 / 1e9,
                c.sample_size * 128 * 4 / 1e6)


if __name__ == "__main__":
    main()
