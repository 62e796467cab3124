"""Tests of the store loader (unseg.core.loader) and of every loop that reads through it: with worker processes the
batches are the stored items, in the order asked, and each converted stream or training pass gives byte for byte what
the in-process path (num_workers=0, the loops as they were) gives."""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import unseg.core.loader as loader_module
from unseg.core.backbones import Backbone, BackboneCfg
from unseg.core.evaluate import CentroidPredictionStream
from unseg.core.features import FeatureStream
from unseg.core.loader import StoreReads, iter_reads, resolve_num_workers, shard_batches
from unseg.core.picie.clustering import ClusterConfig
from unseg.core.picie.inference import ImageSource, PiCIEFeatureStream
from unseg.core.picie.loss import LossConfig
from unseg.core.picie.train import EpochContext, TrainConfig, run_epoch
from unseg.core.picie.views import ViewConfig
from unseg.core.primaps.crf import CRFConfig
from unseg.core.primaps.masks import ProposalStream
from unseg.core.primaps.predict import PrototypePredictionStream, val_scores
from unseg.core.primaps.proposals import ProposalConfig
from unseg.core.primaps.sources import BackboneFeatures, StoreFeatures
from unseg.core.primaps.train import EMConfig, EMData, fit_em
from unseg.core.store import FieldSpec, Shard, ShardStore, write_store

CPU = torch.device("cpu")
SIDE, N, SHARD = 16, 10, 4  # 10 items in shards of 4, 4, 2
WORKERS = (0, 2)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Arrays:
    """An ArrayStream of whole arrays cut into shards of SHARD."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        count = len(next(iter(arrays.values())))
        self.ids = [f"img{i:03d}" for i in range(count)]
        self.fields = {k: FieldSpec(str(v.dtype), tuple(v.shape[1:])) for k, v in arrays.items()}
        self.attrs: dict[str, Any] = {}
        self.fingerprint = f"arrays-{count}"
        self.num_shards = -(-count // SHARD)

    def iter_shards(self, todo: Sequence[int]) -> Iterator[Shard]:
        for i in todo:
            part = slice(SHARD * i, SHARD * (i + 1))
            yield Shard(i, self.ids[part], {k: v[part] for k, v in self.arrays.items()})


def make_store(root: Path, **arrays: np.ndarray) -> ShardStore:
    write_store(Arrays(arrays), root, progress=False)
    return ShardStore(root)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ShardStore]:
    tmp = tmp_path_factory.mktemp("loader")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, SIDE, SIDE, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, (N, SIDE, SIDE), dtype=np.uint8)
    feats = rng.normal(size=(N, 4, SIDE // 2, SIDE // 2)).astype(np.float16)
    masks = rng.integers(0, 3, (N, SIDE, SIDE), dtype=np.uint8)
    masks[3] = 255  # an image without a mask: left out of the EM
    picie = rng.integers(0, 256, (N, 32, 32, 3), dtype=np.uint8)  # PiCIE's views need a side of 32 or more
    return {"images": make_store(tmp / "images", image=images, label=labels),
            "picie": make_store(tmp / "picie", image=picie),
            "feat": make_store(tmp / "feat", feat=feats), "masks": make_store(tmp / "masks", mask=masks)}


def _conv(cin: int, cout: int, stride: int) -> nn.Conv2d:
    """A frozen patchify conv with fixed random weights (the global RNG is not used)."""
    conv = nn.Conv2d(cin, cout, kernel_size=stride, stride=stride)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen))
    return conv.eval().requires_grad_(False)


def tiny_backbone() -> Backbone:
    cfg = BackboneCfg("tiny", dim=4, stride=2, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_multiple=2,
                      weights_source="none")
    return Backbone(cfg, _conv(3, 4, 2))


class TinyPiCIE(nn.Module):
    """A stand-in for PiCIENet: stride 4, 4 channels, one learnable conv."""

    arch, dim, stride = "tiny", 4, 4

    def __init__(self) -> None:
        super().__init__()
        self.conv = _conv(3, 4, 4).requires_grad_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def assert_same_stores(a: Path, b: Path) -> None:
    left, right = ShardStore(a), ShardStore(b)
    assert left.ids == right.ids and left.shard_counts == right.shard_counts
    for index in range(left.num_shards):
        for name, array in left.shard(index).items():
            other = right.shard(index)[name]
            assert array.dtype == other.dtype and array.tobytes() == other.tobytes(), (index, name)


def written(stream: Any, root: Path) -> Path:
    write_store(stream, root, progress=False)
    return root


# --------------------------------------------------------------------------------------------------- the loader
BATCHES = [[5, 0, 9], [1, 2], [], [6, 6, 3], [0, 1, 2, 3], [8, 4]]  # across shards, unsorted, repeats, empty


@pytest.mark.parametrize("workers", WORKERS)
def test_reads_are_the_stored_items_in_the_order_asked(stores: dict[str, ShardStore], workers: int) -> None:
    store = stores["images"]
    reads = list(iter_reads(store, ["image", "label"], BATCHES, workers))
    assert len(reads) == len(BATCHES)
    for batch, read in zip(BATCHES, reads, strict=True):
        for name in ("image", "label"):
            expected = np.stack([store.item(p, [name])[name] for p in batch]) if batch else \
                np.zeros((0, *store.fields[name].shape), np.uint8)
            assert read[name].dtype == torch.uint8 and read[name].numpy().tobytes() == expected.tobytes()
            assert tuple(read[name].shape) == expected.shape


def test_two_workers_read_what_one_process_reads(stores: dict[str, ShardStore]) -> None:
    batches = shard_batches(stores["feat"], range(stores["feat"].num_shards), 3) + BATCHES
    one = list(iter_reads(stores["feat"], ["feat"], batches, 0))
    two = list(iter_reads(stores["feat"], ["feat"], batches, 2))
    assert [r["feat"].dtype for r in two] == [torch.float16] * len(batches)
    assert all(torch.equal(a["feat"], b["feat"]) for a, b in zip(one, two, strict=True))


def test_workers_leave_the_global_torch_rng_untouched(stores: dict[str, ShardStore]) -> None:
    """A DataLoader draws its base seed from the global RNG unless given a generator: the loader gives it its own."""
    torch.manual_seed(123)
    state = torch.get_rng_state()
    for workers in WORKERS:
        list(iter_reads(stores["images"], ["image"], BATCHES, workers))
    assert torch.equal(torch.get_rng_state(), state)


def test_memory_maps_are_opened_by_the_reader_and_bounded(stores: dict[str, ShardStore],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    reads = StoreReads(stores["images"], ["image"])
    reads[[0, 9]]
    assert sorted(reads._maps) == [0, 2]
    assert pickle.loads(pickle.dumps(reads))._maps == {}  # a spawned worker opens its own
    monkeypatch.setattr(loader_module, "OPEN_SHARDS", 1)
    reads[[4]]
    assert list(reads._maps) == [1]


def test_bad_reads_fail_clearly(stores: dict[str, ShardStore]) -> None:
    with pytest.raises(IndexError, match=r"positions outside \[0, 10\)"):
        next(iter_reads(stores["images"], ["image"], [[3, 10]]))
    with pytest.raises(ValueError, match="no field \\['feat'\\]"):
        StoreReads(stores["images"], ["feat"])
    with pytest.raises(ValueError, match="num_workers must be >= 0"):
        next(iter_reads(stores["images"], ["image"], [[0]], -1))


def test_shard_batches(stores: dict[str, ShardStore]) -> None:
    store = stores["images"]
    assert shard_batches(store, [2, 0], 3) == [[8, 9], [0, 1, 2], [3]]
    assert shard_batches(store, [1]) == [[4, 5, 6, 7]]


def test_num_workers_setting() -> None:
    assert resolve_num_workers("auto", CPU) == 0
    assert 1 <= resolve_num_workers("auto", torch.device("cuda")) <= loader_module.MAX_AUTO_WORKERS
    assert resolve_num_workers(3, CPU) == 3 and resolve_num_workers(0, torch.device("cuda")) == 0
    for bad in (-1, "four", True, 1.5, None):
        with pytest.raises(ValueError, match="loader.num_workers must be 'auto' or an integer >= 0"):
            resolve_num_workers(bad, CPU)


# ------------------------------------------------------------------------------- the loops, 2 workers vs none
def test_feature_stream(stores: dict[str, ShardStore], tmp_path: Path) -> None:
    backbone = tiny_backbone()
    runs = [written(FeatureStream(stores["images"], backbone, CPU, 3, "w", num_workers=w), tmp_path / f"f{w}")
            for w in WORKERS]
    assert_same_stores(*runs)
    direct = backbone(torch.from_numpy(np.array(stores["images"].shard(2)["image"])).permute(0, 3, 1, 2) / 255.0)
    assert np.array_equal(ShardStore(runs[1]).shard(2)["feat"], direct.numpy().astype(np.float16))


@pytest.mark.parametrize(("name", "field", "images"), [("feat", "feat", False), ("images", "image", True)])
def test_centroid_prediction_stream(stores: dict[str, ShardStore], tmp_path: Path, name: str, field: str,
                                    images: bool) -> None:
    dim = 3 if images else 4
    centroids = np.random.default_rng(1).normal(size=(5, dim)).astype(np.float32)
    runs = [written(CentroidPredictionStream(stores[name], field, images, centroids, "cosine", (SIDE, SIDE), CPU,
                                             batch_size=3, num_workers=w), tmp_path / f"p{w}") for w in WORKERS]
    assert_same_stores(*runs)
    assert len(np.unique(ShardStore(runs[1]).shard(0)["pred"])) > 1


def test_picie_feature_stream(stores: dict[str, ShardStore], tmp_path: Path) -> None:
    net = TinyPiCIE()
    runs = [written(PiCIEFeatureStream(stores["images"], net, CPU, 3, SIDE, "w", num_workers=w), tmp_path / f"p{w}")
            for w in WORKERS]
    assert_same_stores(*runs)


def test_picie_epoch(stores: dict[str, ShardStore]) -> None:
    """A whole epoch (clustering, label and training passes) from two worker processes: the same metrics and
    weights as in-process reads."""
    views = ViewConfig(input_size=32, blur_radius=(0.05, 0.3))
    results = []
    for workers in WORKERS:
        net = TinyPiCIE()
        ctx = EpochContext(net, torch.optim.Adam(net.parameters(), lr=1e-2),
                           ImageSource(stores["picie"], None, workers), views,
                           ClusterConfig(num_clusters=3, num_iters=5, sample_size=200, init_batches=2, batch_size=3,
                                         cache_mb=0), LossConfig(),
                           TrainConfig(epochs=1, batch_size=4, progress=False), 0, CPU, None)
        metrics = {k: v for k, v in run_epoch(ctx, 1).items() if not k.endswith("_time_s")}
        results.append((metrics, net.conv.weight.detach().clone()))
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1])
    assert not torch.equal(results[0][1], TinyPiCIE().conv.weight)


def test_em_epochs(stores: dict[str, ShardStore]) -> None:
    """EM from memory-mapped features with an online augmenting student: its augmentation draws stay in the main
    process, so two worker processes give the same prototypes and history."""
    config = EMConfig(num_prototypes=3, epochs=2, batch_size=3, init="centroids", ema_every=2, seed=0)
    centroids = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    results = []
    for workers in WORKERS:
        teacher = StoreFeatures(stores["feat"], CPU, memory_limit=0, num_workers=workers)
        student = BackboneFeatures(stores["images"], tiny_backbone(), CPU, augment=True, num_workers=workers)
        results.append(fit_em(EMData(teacher, student, stores["masks"], np.zeros((0, 4))), config, CPU,
                              centroids=centroids, num_workers=workers))
    first, second = results
    assert first.history == second.history and first.steps == second.steps == 6 and first.skipped == ["img003"]
    for a, b in ((first.teacher, second.teacher), (first.student, second.student)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_store_features_in_memory_and_streamed(stores: dict[str, ShardStore]) -> None:
    batches = [[9, 0], [4, 5, 6]]
    whole = StoreFeatures(stores["feat"], CPU, num_workers=2)
    mapped = StoreFeatures(stores["feat"], CPU, memory_limit=0, num_workers=2)
    assert whole._all is not None and mapped._all is None
    for batch, a, b in zip(batches, whole.stream(batches), mapped.stream(batches), strict=True):
        assert torch.equal(a, b) and torch.equal(a, mapped(batch)) and a.dtype == torch.float32


def test_prototype_predictions_and_val_scores(stores: dict[str, ShardStore], tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    state = {"directions": rng.normal(size=(3, 4)).astype(np.float32), "gains": np.ones(3, np.float32)}
    crf = CRFConfig(iterations=2)
    runs, scores = [], []
    for workers in WORKERS:
        source = BackboneFeatures(stores["images"], tiny_backbone(), CPU, flip_average=True, num_workers=workers)
        stream = PrototypePredictionStream(state, source, stores["images"], crf, CPU, {"method": "t"}, batch_size=3,
                                           num_workers=workers)
        runs.append(written(stream, tmp_path / f"p{workers}"))
        scores.append(val_scores(stream.model, source, stores["images"], 3, batch_size=3, num_workers=workers))
    assert_same_stores(*runs)
    assert scores[0] == scores[1]


def test_proposal_stream(stores: dict[str, ShardStore], tmp_path: Path) -> None:
    proposals = ProposalConfig(batch_size=3)
    crf = CRFConfig(enabled=False)
    runs = [written(ProposalStream(stores["feat"], stores["images"], proposals, crf, CPU, num_workers=w),
                    tmp_path / f"m{w}") for w in WORKERS]
    assert_same_stores(*runs)
