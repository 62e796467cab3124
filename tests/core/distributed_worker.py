"""One process of the data-parallel store writes, run by tests/core/test_distributed.py alone (a world of 1) or under
`torchrun --standalone --nproc-per-node=2` (gloo).

    python distributed_worker.py OUT

Writes into OUT the input stores (images with labels, features: deterministic from a seed) and every data-parallel
stream of the chain over them: backbone features, mask proposals with DenseCRF, centroid predictions, PiCIE
features. Then rank 1 (if any) tries to write a stream of another fingerprint beside rank 0's (as another code
version or other inputs would): each rank saves the error it got in OUT/mismatch-rank<r>.txt.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unseg.core import distributed
from unseg.core.store import FieldSpec, Shard, ShardStore, write_pooled, write_store

CPU = torch.device("cpu")
SIDE, N, SHARD = 32, 11, 2  # 11 items in 6 shards: the ranks get 3 each, the last shard smaller


class Arrays:
    """An ArrayStream of whole arrays cut into shards of SHARD."""

    def __init__(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        self.ids = [f"img{i:03d}" for i in range(N)]
        self.fields = {k: FieldSpec(str(v.dtype), tuple(v.shape[1:])) for k, v in arrays.items()}
        self.attrs: dict[str, Any] = {"split": "train"}
        self.fingerprint = f"{name}-{N}"
        self.num_shards = -(-N // SHARD)

    def iter_shards(self, todo: list[int]) -> Any:
        for i in todo:
            part = slice(SHARD * i, SHARD * (i + 1))
            yield Shard(i, self.ids[part], {k: v[part] for k, v in self.arrays.items()})


def conv(cin: int, cout: int, stride: int, seed: int) -> nn.Conv2d:
    layer = nn.Conv2d(cin, cout, kernel_size=stride, stride=stride)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen))
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen))
    return layer.eval().requires_grad_(False)


class TinyPiCIE(nn.Module):
    arch, dim, stride = "tiny", 4, 4

    def __init__(self) -> None:
        super().__init__()
        self.conv = conv(3, 4, 4, seed=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def main(out: Path) -> None:
    distributed.init_from_env()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, SIDE, SIDE, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, (N, SIDE, SIDE), dtype=np.uint8)
    write_store(Arrays("images", {"image": images, "label": labels}), out / "images", progress=False)
    images_store = ShardStore(out / "images")
    from unseg.core.backbones import Backbone, BackboneCfg
    from unseg.core.evaluate import CentroidPredictionStream
    from unseg.core.features import FeatureStream
    from unseg.core.picie.inference import PiCIEFeatureStream
    from unseg.core.primaps.crf import CRFConfig
    from unseg.core.primaps.masks import ProposalStream
    from unseg.core.primaps.proposals import ProposalConfig

    seed = 0
    cfg = BackboneCfg("tiny", dim=4, stride=4, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_multiple=4,
                      weights_source="none")
    backbone = Backbone(cfg, conv(3, 4, 4, seed))
    # versioned datasets write through write_pooled: data content-addressed, a record written by rank 0
    write_pooled(FeatureStream(images_store, backbone, CPU, 3, f"tiny-{seed}"), out / "feat" / "v1",
                 out / "feat" / ".stores", progress=False)
    feat = ShardStore(out / "feat" / "v1")
    streams = {
        "masks": ProposalStream(feat, images_store, ProposalConfig(batch_size=3), CRFConfig(enabled=True, workers=1),
                                CPU),
        "kmeans_pred": CentroidPredictionStream(feat, "feat", False,
                                                np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32),
                                                "cosine", (SIDE, SIDE), CPU, batch_size=3),
        "picie_feat": PiCIEFeatureStream(images_store, TinyPiCIE(), CPU, 3, SIDE, "w"),
    }
    for name, stream in streams.items():
        write_store(stream, out / name, progress=False)
    try:
        write_store(Arrays("other-images" if distributed.rank() == 1 else "images", {"image": images}),
                    out / "mismatch", progress=False)
    except distributed.DistributedMismatch as err:
        (out / f"mismatch-rank{distributed.rank()}.txt").write_text(str(err))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
