"""Tests of the online store (unseg.core.online): it reads like the ShardStore written from the same stream, computes
shards only when read, keeps at most its cached shards, and is read in the calling process."""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from kedro.io import DatasetError
from test_loader import CPU, SHARD, SIDE, N, TinyPiCIE, make_store, tiny_backbone

from unseg.core.features import FeatureStream
from unseg.core.loader import iter_reads
from unseg.core.online import OnlineStore
from unseg.core.picie.inference import PiCIEFeatureStream
from unseg.core.primaps.sources import StoreFeatures
from unseg.core.store import (
    INGESTION,
    Shard,
    ShardStore,
    StoreError,
    check_made_from,
    check_same_ingestion,
    check_split,
    upstream_stores,
    write_store,
)
from unseg.datasets import OnlineStoreDataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass
class CountingFeatureStream(FeatureStream):
    """A FeatureStream that records the ids of every shard it computes (shared by its copies)."""

    computed: list[list[str]] = field(default_factory=list)

    def iter_shards(self, todo: Sequence[int]) -> Iterator[Shard]:
        for shard in super().iter_shards(todo):
            self.computed.append(list(shard.ids))
            yield shard


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> ShardStore:
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("online") / "images"
    make_store(root, image=rng.integers(0, 256, (N, SIDE, SIDE, 3), dtype=np.uint8),
                       label=rng.integers(0, 3, (N, SIDE, SIDE), dtype=np.uint8))
    meta = (root / "meta.json").read_text().replace('"attrs": {}', '"attrs": {"split": "train", "ingestion": "ing1"}')
    (root / "meta.json").write_text(meta)
    return ShardStore(root)


def stream(images: ShardStore, workers: int = 0) -> CountingFeatureStream:
    return CountingFeatureStream(images, tiny_backbone(), CPU, 3, "w", num_workers=workers)


@pytest.fixture(scope="module")
def stored(images: ShardStore, tmp_path_factory: pytest.TempPathFactory) -> ShardStore:
    root = tmp_path_factory.mktemp("online_stored") / "feat"
    write_store(stream(images), root, progress=False)
    return ShardStore(root)


def test_reads_like_the_stored_copy(images: ShardStore, stored: ShardStore) -> None:
    online = OnlineStore(stream(images), "feat_train")
    assert online.online and not stored.online
    assert online.ids == stored.ids and online.shard_counts == stored.shard_counts and len(online) == len(stored) == N
    assert online.fields == stored.fields and online.fingerprint == stored.fingerprint
    assert online.attrs == stored.attrs and online.attrs[INGESTION] == "ing1" and online.attrs["split"] == "train"
    assert online.skipped == stored.skipped == []
    assert "feat_train" in str(online.root) and str(images.root) in str(online.root)
    for index in range(stored.num_shards):
        a, b = online.shard(index)["feat"], stored.shard(index)["feat"]
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes() and not a.flags.writeable
        assert online.shard_ids(index) == stored.shard_ids(index)
    for key in (0, 5, N - 1, "img003", "img009"):
        assert online.locate(key) == stored.locate(key)
        assert np.array_equal(online.item(key)["feat"], stored.item(key)["feat"])
    for a, b in zip(online.iter_shards(["feat"]), stored.iter_shards(["feat"]), strict=True):
        assert np.array_equal(a["feat"], b["feat"])
    for count, budget in ((50, 2**30), (50, 0), (10**6, 2**30)):  # read whole, a subset of items, everything
        np.testing.assert_array_equal(online.sample_vectors("feat", count, 7, read_budget=budget),
                                      stored.sample_vectors("feat", count, 7, read_budget=budget))
    with pytest.raises(IndexError, match="out of range"):
        online.shard(stored.num_shards)


def test_lineage_checks_as_with_the_stored_copy(images: ShardStore, stored: ShardStore, tmp_path: Path) -> None:
    online = OnlineStore(stream(images), "feat_train")
    for features in (online, stored):
        check_same_ingestion(feat_train=features, prm_train_images=images)
        check_made_from("feat_train", features, "prm_train_images", images)
        check_split("feat_train", features, "train")
        with pytest.raises(StoreError, match="split"):
            check_split("feat_train", features, "val")
    other = make_store(tmp_path / "other", image=np.zeros((N + 1, SIDE, SIDE, 3), np.uint8))  # no ingestion
    for features in (online, stored):
        with pytest.raises(StoreError, match="do not belong together"):
            check_made_from("feat_train", features, "prm_train_images", other)
        with pytest.raises(StoreError, match="one ingestion"):
            check_same_ingestion(feat_train=features, prm_train_images=other)
    # a stream reading the online store sees it as an upstream store (write_store copies its lineage)
    assert upstream_stores(SimpleNamespace(features=online)) == {"features": online}


def test_shards_are_computed_lazily_and_memory_is_bounded(images: ShardStore) -> None:
    counting = stream(images)
    online = OnlineStore(counting, cache_shards=2)
    assert counting.computed == [] and online.shards_computed == 0  # nothing at construction
    online.sample_vectors("feat", 5, 0, read_budget=0)  # 5 vectors from ceil(5 * 4 / 64) = 1 item: one shard
    assert len(counting.computed) == 1 and len(counting.computed[0]) in (SHARD, N % SHARD)
    for position in range(N):  # item by item in order: each shard once
        online.item(position)
    assert len(online._cache) <= 2
    assert [len(ids) for ids in counting.computed[1:]] in ([4, 4, 2], [4, 2], [4, 4])
    computed = len(counting.computed)
    online.item(N - 1)  # cached
    assert len(counting.computed) == computed
    online.shard(0)
    online.shard(1)
    online.shard(2)
    assert sorted(online._cache) == [1, 2]


def test_shuffled_reads_compute_only_the_items_asked(images: ShardStore, stored: ShardStore) -> None:
    counting = stream(images)
    online = OnlineStore(counting)
    batch = [9, 0, 5, 5]  # across shards, unsorted, a repeat
    got = online.rows(batch, ["feat"])["feat"]
    assert len(counting.computed) == 1  # one pass over these items only
    assert sorted(counting.computed[0]) == sorted(f"img{i:03d}" for i in batch)
    expected = np.stack([stored.item(i)["feat"] for i in batch])
    np.testing.assert_allclose(got.astype(np.float32), expected.astype(np.float32), rtol=1e-3, atol=1e-3)
    online.shard(2)
    counting.computed.clear()
    assert np.array_equal(online.rows([9, 8], ["feat"])["feat"], stored.shard(2)["feat"][[1, 0]])  # from the cache
    assert counting.computed == []
    assert np.array_equal(online.rows([0, 1, 2, 3, 4], ["feat"])["feat"],  # a run: its shards, kept
                          np.concatenate([stored.shard(0)["feat"], stored.shard(1)["feat"][:1]]))
    assert len(counting.computed) == 2 and set(online._cache) == {0, 1}


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_reads_in_this_process(images: ShardStore, stored: ShardStore, workers: int,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    online = OnlineStore(stream(images, workers))

    def no_pickling(self: OnlineStore) -> None:
        raise AssertionError("an online store was sent to another process")

    monkeypatch.setattr(OnlineStore, "__reduce_ex__", lambda self, protocol: no_pickling(self), raising=False)
    with pytest.raises(AssertionError, match="another process"):
        pickle.dumps(online)
    batches = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    for batch, read in zip(batches, iter_reads(online, ["feat"], batches, num_workers=workers), strict=True):
        assert torch.equal(read["feat"], torch.from_numpy(np.stack([stored.item(i)["feat"] for i in batch])))
    whole = StoreFeatures(online, CPU, num_workers=workers)  # reads the store into memory once
    mapped = StoreFeatures(online, CPU, memory_limit=0, num_workers=workers)  # item by item
    reference = StoreFeatures(stored, CPU)
    assert whole._all is not None and torch.equal(whole._all, reference._all)
    np.testing.assert_allclose(mapped([9, 0, 4]).numpy(), reference([9, 0, 4]).numpy(), rtol=1e-3, atol=1e-3)


def test_picie_features_online(images: ShardStore, tmp_path: Path) -> None:
    net = TinyPiCIE()
    picie = PiCIEFeatureStream(images, net, CPU, 3, SIDE, "w", num_workers=0)
    write_store(picie, tmp_path / "picie", progress=False)
    stored, online = ShardStore(tmp_path / "picie"), OnlineStore(picie, "feat_picie_train")
    assert online.attrs == stored.attrs and online.fingerprint == stored.fingerprint
    for index in range(stored.num_shards):
        assert online.shard(index)["feat"].tobytes() == stored.shard(index)["feat"].tobytes()
    np.testing.assert_array_equal(online.sample_vectors("feat", 40, 3), stored.sample_vectors("feat", 40, 3))


def test_online_store_dataset(images: ShardStore, stored: ShardStore) -> None:
    dataset = OnlineStoreDataset(description="feat_train")
    assert not dataset.exists()
    with pytest.raises(DatasetError, match="loaded before it was saved"):
        dataset.load()
    dataset.save(stream(images))
    assert dataset.exists()
    first, second = dataset.load(), dataset.load()
    assert isinstance(first, OnlineStore) and first is not second and first.stream is second.stream
    assert first.fingerprint == stored.fingerprint and first.ids == stored.ids
    dataset.release()
    assert not dataset.exists()


def test_a_stream_that_does_not_follow_its_input_is_refused(images: ShardStore) -> None:
    class Fewer:
        """Two shards from an input of three."""

        def __init__(self) -> None:
            self.images, self.num_shards, self.fields, self.attrs, self.fingerprint = images, 2, {}, {}, "x"

    with pytest.raises(StoreError, match="one output shard per input shard"):
        OnlineStore(Fewer())  # type: ignore[arg-type]
