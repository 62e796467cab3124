"""PriMaPs proposal throughput: our batched loop against a straightforward per-image loop with torch.pca_lowrank.

The baseline is what the reference implementation does: one image at a time, and per iteration the first principal
direction of the uncovered features from `torch.pca_lowrank(x, q=3, center=True, niter=100)`. Everything else (sign
rule, nearest-neighbour refinement, threshold, stop criteria and guards) is the same as ours, so the two sets of masks
differ only where the randomized PCA's direction differs from the exact one. Both run in this process on the same
features, alternating per chunk so that machine noise hits both alike. Prints images/s of each, the ratio
ours / baseline (target >= 5), the pixel agreement of the two label maps at the feature grid (target >= 0.99), and the
DenseCRF time per image at the image resolution.

Features: a frozen backbone over synthetic scenes (default efficientnet_lite0 at 128 px: 152-d on a 16x16 grid), or
`--features PATH` of a feature store (e.g. data/04_feature/feat_train/<version>/feat_train).

    .venv/bin/python bench/primaps_proposals.py [--images 256] [--size 128] [--features PATH] [--solver lanczos]
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from unseg.core.backbones import create_backbone
from unseg.core.data.synthetic import SyntheticConfig, iter_split
from unseg.core.features import extract
from unseg.core.primaps.crf import CRFConfig, dense_crf, dense_crf_batch
from unseg.core.primaps.postprocess import masks_to_logits, upsample
from unseg.core.primaps.proposals import ProposalConfig, Proposals, Stop, propose_masks
from unseg.core.store import ShardStore

logger = logging.getLogger("bench.primaps")


def baseline_masks(features: torch.Tensor, config: ProposalConfig, seed: int) -> Proposals:
    """The per-image loop with a 100-iteration randomized PCA per step, same rules as ours otherwise.

    Args:
        features: (B, C, h, w).
        config: the same settings as ours (its solver is not used).
        seed: seeds torch's global RNG, which pca_lowrank draws from.

    Returns:
        Proposals of the batch, in the same layout as `propose_masks`.
    """
    torch.manual_seed(seed)
    batch, channels, height, width = features.shape
    cells = height * width
    masks = torch.zeros(batch, config.max_masks, cells)
    counts = torch.zeros(batch, dtype=torch.long)
    iterations = torch.zeros(batch, dtype=torch.long)
    stops = torch.zeros(batch, dtype=torch.long)
    for b in range(batch):
        raw = features[b].float().reshape(channels, cells).T
        unit = F.normalize(raw, dim=1)
        free = torch.ones(cells, dtype=torch.bool)
        covered = torch.zeros(cells, dtype=torch.bool)
        stale, stop = 0, Stop.RUNNING
        while stop == Stop.RUNNING:
            _, _, v = torch.pca_lowrank(raw[free], q=min(3, int(free.sum())), center=True, niter=100)
            sim = unit @ v[:, 0]
            at = torch.where(free, sim.abs(), torch.full_like(sim, -1.0)).argmax()
            sim = sim * (1.0 if sim[at] >= 0 else -1.0)
            sim = torch.where(free, sim, torch.zeros_like(sim))
            first_max = sim.max()
            sim = torch.where(free, unit @ unit[sim.argmax()], torch.zeros_like(sim))
            peak = sim.max()
            if first_max <= 0 or peak <= 0:
                stop = Stop.NO_SIMILARITY
                break
            iterations[b] += 1
            member = (sim > 0) & (sim >= config.threshold * peak)
            free &= ~member
            if int(member.sum()) >= config.min_mask_size:
                masks[b, counts[b]] = torch.where(member, sim / peak, torch.zeros_like(sim))
                counts[b] += 1
                covered |= member
                stale = 0
            else:
                stale += 1
            if covered.float().mean() >= config.coverage:
                stop = Stop.COVERAGE
            elif counts[b] >= config.max_masks:
                stop = Stop.MAX_MASKS
            elif stale >= config.patience:
                stop = Stop.NO_CHANGE
        stops[b] = stop
    return Proposals(masks.reshape(batch, config.max_masks, height, width), counts, iterations, stops)


def grid_labels(result: Proposals) -> torch.Tensor:
    """Label maps at the feature grid (argmax of [background, masks] logits; background = -1)."""
    return masks_to_logits(result.masks, result.counts).argmax(1) - 1


def load_features(args: argparse.Namespace) -> tuple[torch.Tensor, np.ndarray | None]:
    if args.features:
        store = ShardStore(Path(args.features))
        count = min(args.images, len(store))
        return torch.from_numpy(np.stack([store.item(i, ["feat"])["feat"] for i in range(count)])).float(), None
    config = SyntheticConfig(num_train=args.images, num_val=1, height=args.size, width=args.size)
    images = np.stack([img for _, img, _ in iter_split(config, "train")])
    backbone = create_backbone(args.backbone)
    feats = extract(backbone, images, torch.device("cpu"), 32)
    return torch.from_numpy(feats).float(), images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=64, help="images per timed chunk (ours: one batch)")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--features", default=None, help="a feature store folder instead of synthetic scenes")
    parser.add_argument("--solver", default="lanczos", choices=("lanczos", "eigh"))
    parser.add_argument("--crf-images", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    features, images = load_features(args)
    config = ProposalConfig(batch_size=args.chunk, solver=args.solver)

    propose_masks(features[:4], config)  # warm-up (allocator, thread pool, LAPACK)
    baseline_masks(features[:1], config, 0)
    time_ours = time_base = 0.0
    ours_all, base_all = [], []
    for start in range(0, len(features), args.chunk):
        chunk = features[start:start + args.chunk]
        t = time.perf_counter()
        ours = propose_masks(chunk, config)
        time_ours += time.perf_counter() - t
        t = time.perf_counter()
        base = baseline_masks(chunk, config, start)
        time_base += time.perf_counter() - t
        ours_all.append(ours)
        base_all.append(base)

    n = len(features)
    labels_ours = torch.cat([grid_labels(r) for r in ours_all])
    labels_base = torch.cat([grid_labels(r) for r in base_all])
    agreement = (labels_ours == labels_base).float().mean().item()
    counts_ours = torch.cat([r.counts for r in ours_all]).float()
    counts_base = torch.cat([r.counts for r in base_all]).float()
    logger.info("%d images, features %s, %d threads, solver %s", n, tuple(features.shape[1:]),
                torch.get_num_threads(), args.solver)
    logger.info("baseline (per image, pca_lowrank q=3 niter=100): %8.1f img/s  (%.2f masks/image)",
                n / time_base, counts_base.mean())
    logger.info("ours (batched, %-7s)                       : %8.1f img/s  (%.2f masks/image)",
                args.solver, n / time_ours, counts_ours.mean())
    logger.info("speed ratio ours / baseline                   : %8.2f x  (target >= 5)", time_base / time_ours)
    logger.info("pixel agreement of the label maps             : %8.4f    (target >= 0.99)", agreement)
    logger.info("same mask count per image                     : %8.4f", (counts_ours == counts_base).float().mean())

    if images is None:
        logger.info("CRF timing needs images: run without --features")
        return
    crf = CRFConfig()
    result = ours_all[0]
    take = min(args.crf_images, len(result.counts))
    logits = upsample(masks_to_logits(result.masks[:take], result.counts[:take]), images.shape[1:3])
    t = time.perf_counter()
    for b in range(take):
        dense_crf(images[b], logits[b, :int(result.counts[b]) + 1].numpy(), crf)
    per_image = (time.perf_counter() - t) / take
    logger.info("DenseCRF (%dx%d, %d iterations)                : %8.1f ms / image", *images.shape[1:3],
                crf.iterations, 1000 * per_image)
    pairs = [(images[b], logits[b, :int(result.counts[b]) + 1].numpy()) for b in range(take)]
    pooled = CRFConfig(workers=0)  # one worker process per core, as the pipeline runs it
    dense_crf_batch([p[0] for p in pairs[:2]], [p[1] for p in pairs[:2]], pooled)  # workers start once per process
    t = time.perf_counter()
    dense_crf_batch([p[0] for p in pairs], [p[1] for p in pairs], pooled)
    pooled_per_image = (time.perf_counter() - t) / take
    logger.info("DenseCRF batch in %d worker processes          : %8.1f ms / image (%.2fx one by one)",
                os.cpu_count() or 1, 1000 * pooled_per_image, per_image / pooled_per_image)


if __name__ == "__main__":
    main()
