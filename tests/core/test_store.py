"""Tests of the sharded on-disk store (unseg.core.store) and its Kedro dataset."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from kedro.io import DatasetError, Version

from unseg.core.store import INGESTION, FieldSpec, Shard, ShardStore, StoreError, write_store
from unseg.datasets import ShardStoreDataset

C, H, W = 3, 4, 5  # feat field (C, H, W); img field (H, W, 3)


def feat_of(i: int, offset: float = 0.0) -> np.ndarray:
    """feat[c, y, x] = i * 1000 + c * 100 + y * 10 + x (+ offset): every value says where it came from."""
    c, y, x = np.meshgrid(np.arange(C), np.arange(H), np.arange(W), indexing="ij")
    return (i * 1000 + c * 100 + y * 10 + x + offset).astype(np.float32)


def img_of(i: int) -> np.ndarray:
    """img[y, x] = (i, y * W + x, 7): channels-last vectors that name their item and pixel."""
    out = np.empty((H, W, 3), np.uint8)
    out[..., 0] = i
    out[..., 1] = np.arange(H * W).reshape(H, W)
    out[..., 2] = 7
    return out


class FakeStream:
    """An ArrayStream over items 0..num_items-1 in shards of shard_size.

    Fields: feat float32 (C, H, W), img uint8 (H, W, 3), n int64 scalar. `calls` records every `todo` asked for;
    `fail_after` raises after that many shards have been produced (a simulated kill); `on_shard` runs before each
    shard is handed over (to look at the disk mid-write).
    """

    def __init__(self, num_items: int = 12, shard_size: int = 3, fp: str = "fp-a", offset: float = 0.0,
                 skip: Sequence[int] = (), fail_after: int | None = None, on_shard=None) -> None:
        self.num_items, self.shard_size, self.offset = num_items, shard_size, offset
        self.skip = set(skip)
        self.fail_after = fail_after
        self.on_shard = on_shard
        self.fields = {"feat": FieldSpec("float32", (C, H, W)), "img": FieldSpec("uint8", (H, W, 3)),
                       "n": FieldSpec("int64", ())}
        self.attrs = {"backbone": "fake", "stride": 8, "class_names": ["a", "b"], "offset": offset}
        self.fingerprint = fp
        self.calls: list[list[int]] = []

    @property
    def num_shards(self) -> int:
        return (self.num_items + self.shard_size - 1) // self.shard_size

    def iter_shards(self, todo: Sequence[int]) -> Iterator[Shard]:
        self.calls.append(list(todo))
        for produced, index in enumerate(todo):
            if self.fail_after is not None and produced == self.fail_after:
                raise RuntimeError("simulated kill")
            if self.on_shard is not None:
                self.on_shard(index)
            items = range(index * self.shard_size, min((index + 1) * self.shard_size, self.num_items))
            kept = [i for i in items if i not in self.skip]
            skipped = [{"id": item_id(i), "path": f"/data/{item_id(i)}.png", "problem": "corrupt"}
                       for i in items if i in self.skip]
            arrays = {
                "feat": np.stack([feat_of(i, self.offset) for i in kept]) if kept
                else np.zeros((0, C, H, W), np.float32),
                "img": np.stack([img_of(i) for i in kept]) if kept else np.zeros((0, H, W, 3), np.uint8),
                "n": np.array(kept, dtype=np.int64),
            }
            yield Shard(index, [item_id(i) for i in kept], arrays, skipped)


def item_id(i: int) -> str:
    return f"img{i:03d}"


def assert_content(store: ShardStore, items: Sequence[int], offset: float = 0.0) -> None:
    """The store holds exactly `items`, in order, with the values FakeStream makes."""
    assert store.ids == [item_id(i) for i in items]
    assert len(store) == len(items)
    for position, i in enumerate(items):
        got = store.item(position)
        np.testing.assert_array_equal(got["feat"], feat_of(i, offset))
        np.testing.assert_array_equal(got["img"], img_of(i))
        assert int(got["n"]) == i


def staging_dirs(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if ".staging-" in p.name)


# ---------------------------------------------------------------------------------------------------- round trip
def test_round_trip_ids_fields_dtypes_values_attrs(tmp_path: Path) -> None:
    stream = FakeStream(num_items=10, shard_size=4)
    write_store(stream, tmp_path / "store", progress=False)
    store = ShardStore(tmp_path / "store")

    assert stream.calls == [[0, 1, 2]]
    assert store.fields == {"feat": FieldSpec("float32", (C, H, W)), "img": FieldSpec("uint8", (H, W, 3)),
                            "n": FieldSpec("int64", ())}
    assert store.attrs == {"backbone": "fake", "stride": 8, "class_names": ["a", "b"], "offset": 0.0}
    assert store.fingerprint == "fp-a"
    assert store.num_shards == 3
    assert store.shard_counts == [4, 4, 2]
    assert store.skipped == []
    assert_content(store, range(10))
    for index, count in enumerate([4, 4, 2]):
        shard = store.shard(index)
        assert set(shard) == {"feat", "img", "n"}
        assert shard["feat"].dtype == np.float32 and shard["feat"].shape == (count, C, H, W)
        assert shard["img"].dtype == np.uint8 and shard["img"].shape == (count, H, W, 3)
        assert shard["n"].dtype == np.int64 and shard["n"].shape == (count,)
        first = 4 * index
        np.testing.assert_array_equal(shard["n"], np.arange(first, first + count))
        np.testing.assert_array_equal(shard["feat"], np.stack([feat_of(i) for i in range(first, first + count)]))
        assert store.shard_ids(index) == [item_id(i) for i in range(first, first + count)]
    # only the fields asked for
    assert set(store.shard(1, ["img"])) == {"img"}
    assert [s["n"].tolist() for s in store.iter_shards(["n"])] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    # the staging folder is gone once the write is complete
    assert staging_dirs(tmp_path) == []
    assert "ShardStore(" in repr(store) and "items=10" in repr(store)


@pytest.mark.parametrize("key", ["img000", "img005", "img009", 0, 5, 9])
def test_item_by_id_and_by_position(tmp_path: Path, key: int | str) -> None:
    write_store(FakeStream(num_items=10, shard_size=4), tmp_path / "store", progress=False)
    store = ShardStore(tmp_path / "store")
    i = int(key[3:]) if isinstance(key, str) else key
    got = store.item(key)
    np.testing.assert_array_equal(got["feat"], feat_of(i))
    np.testing.assert_array_equal(got["img"], img_of(i))
    assert store.locate(key) == (i // 4, i % 4)
    assert set(store.item(key, ["n"])) == {"n"}
    np.testing.assert_array_equal(store.item(key)["feat"], store.item(item_id(i))["feat"])


def test_item_and_shard_out_of_range(tmp_path: Path) -> None:
    write_store(FakeStream(num_items=5, shard_size=2), tmp_path / "store", progress=False)
    store = ShardStore(tmp_path / "store")
    with pytest.raises(IndexError, match="out of range"):
        store.item(5)
    with pytest.raises(IndexError, match="out of range"):
        store.item(-1)
    with pytest.raises(IndexError, match="shard 3"):
        store.shard(3)
    with pytest.raises(KeyError):
        store.item("no-such-id")


def test_shard_with_wrong_shape_is_refused(tmp_path: Path) -> None:
    class WrongShape(FakeStream):
        def iter_shards(self, todo):
            for shard in super().iter_shards(todo):
                shard.arrays["feat"] = shard.arrays["feat"][:, :, :2]
                yield shard

    with pytest.raises(StoreError, match="field 'feat'"):
        write_store(WrongShape(), tmp_path / "store", progress=False)
    assert not (tmp_path / "store").exists()


# ------------------------------------------------------------------------------------------------- sample_vectors
@pytest.mark.parametrize("count", [1, 17, 100])
def test_sample_vectors_come_from_the_store(tmp_path: Path, count: int) -> None:
    write_store(FakeStream(num_items=10, shard_size=3), tmp_path / "store", progress=False)
    store = ShardStore(tmp_path / "store")
    sample = store.sample_vectors("feat", count, seed=3)
    assert sample.dtype == np.float32
    assert sample.shape == (count, C)
    # feat[i, c, y, x] = i*1000 + c*100 + y*10 + x: subtracting the channel part leaves the position
    base = sample - 100 * np.arange(C)[None, :]
    assert np.all(base == base[:, :1]), "each vector must be one pixel's channels"
    position = base[:, 0].astype(np.int64)
    i, rest = np.divmod(position, 1000)
    y, x = np.divmod(rest, 10)
    assert np.all((0 <= i) & (i < 10) & (0 <= y) & (y < H) & (0 <= x) & (x < W))
    for row in range(count):
        np.testing.assert_array_equal(sample[row], store.item(int(i[row]))["feat"][:, y[row], x[row]])
    # without replacement, in store order
    flat = (i * H + y) * W + x
    assert len(np.unique(flat)) == count
    assert np.all(np.diff(flat) > 0)


def test_sample_vectors_channels_last(tmp_path: Path) -> None:
    write_store(FakeStream(num_items=10, shard_size=3), tmp_path / "store", progress=False)
    store = ShardStore(tmp_path / "store")
    sample = store.sample_vectors("img", 40, seed=0, channels_last=True)
    assert sample.shape == (40, 3) and sample.dtype == np.float32
    assert np.all(sample[:, 2] == 7)
    i, pixel = sample[:, 0].astype(int), sample[:, 1].astype(int)
    assert np.all((0 <= i) & (i < 10) & (0 <= pixel) & (pixel < H * W))
    for row in range(40):
        y, x = divmod(pixel[row], W)
        np.testing.assert_array_equal(sample[row], store.item(int(i[row]))["img"][y, x])
    flat = i * H * W + pixel
    assert len(np.unique(flat)) == 40 and np.all(np.diff(flat) > 0)


def test_sample_vectors_all_when_count_exceeds_total(tmp_path: Path) -> None:
    write_store(FakeStream(num_items=4, shard_size=3), tmp_path / "store", progress=False)
    store = ShardStore(tmp_path / "store")
    total = 4 * H * W
    sample = store.sample_vectors("feat", 10 * total, seed=1)
    expected = np.concatenate([feat_of(i).reshape(C, H * W).T for i in range(4)])
    np.testing.assert_array_equal(sample, expected)
    sample_hwc = store.sample_vectors("img", total + 1, seed=1, channels_last=True)
    np.testing.assert_array_equal(sample_hwc, np.concatenate([img_of(i).reshape(H * W, 3) for i in range(4)]))


def test_sample_vectors_deterministic_per_seed(tmp_path: Path) -> None:
    write_store(FakeStream(num_items=10, shard_size=3), tmp_path / "store", progress=False)
    store = ShardStore(tmp_path / "store")
    a, b = store.sample_vectors("feat", 30, seed=5), store.sample_vectors("feat", 30, seed=5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, store.sample_vectors("feat", 30, seed=6))


def test_sample_vectors_reads_only_the_items_it_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the read budget, the items read grow with the sample, not with the store: a sample of half an item's
    pixels reads ceil(4 * count / per_item) = 2 items (at most a quarter of each item's pixels is taken), wherever
    they are; over seeds every item can be chosen. Within the budget every item is read (a uniform draw)."""
    write_store(FakeStream(num_items=60, shard_size=7), tmp_path / "store", progress=False)
    store = ShardStore(tmp_path / "store")
    read: list[int] = []
    real_locate = store.locate
    monkeypatch.setattr(store, "locate", lambda key: read.append(int(key)) or real_locate(key))
    per_item, chosen = H * W, set()
    for seed in range(80):
        read.clear()
        sample = store.sample_vectors("feat", per_item // 2, seed=seed, read_budget=0)
        items = set((sample[:, 0] // 1000).astype(int).tolist())
        assert len(read) <= 2 and items == set(read)
        for row in range(0, len(sample), 5):
            i, rest = divmod(int(sample[row, 0]), 1000)
            y, x = divmod(rest, 10)
            np.testing.assert_array_equal(sample[row], feat_of(i)[:, y, x])
        chosen |= items
    assert len(chosen) > 50
    read.clear()
    store.sample_vectors("feat", per_item // 2, seed=0)
    assert read == sorted(set(read)) and 1 < len(read) <= per_item // 2  # in store order, any item


def test_sample_vectors_needs_a_dense_field(tmp_path: Path) -> None:
    write_store(FakeStream(num_items=4), tmp_path / "store", progress=False)
    with pytest.raises(StoreError, match="'n'"):
        ShardStore(tmp_path / "store").sample_vectors("n", 3, seed=0)


# -------------------------------------------------------------------------------------------------------- skipped
def test_skipped_entries_land_in_store_skipped(tmp_path: Path) -> None:
    # shard 1 (items 3, 4, 5) loses every item; shard 2 loses item 7
    stream = FakeStream(num_items=9, shard_size=3, skip=[3, 4, 5, 7])
    write_store(stream, tmp_path / "store", progress=False)
    store = ShardStore(tmp_path / "store")
    assert store.skipped == [{"id": item_id(i), "path": f"/data/{item_id(i)}.png", "problem": "corrupt"}
                             for i in (3, 4, 5, 7)]
    assert store.shard_counts == [3, 0, 2]
    assert store.shard(1)["feat"].shape == (0, C, H, W)
    assert store.shard_ids(1) == []
    assert_content(store, [0, 1, 2, 6, 8])
    assert store.locate("img006") == (2, 0)
    assert store.locate(4) == (2, 1)
    sample = store.sample_vectors("feat", 1000, seed=0)
    assert sample.shape == (5 * H * W, C)
    assert set((sample[:, 0] // 1000).astype(int)) == {0, 1, 2, 6, 8}


# --------------------------------------------------------------------------------------------------------- resume
def test_resume_after_a_kill_only_computes_missing_shards(tmp_path: Path) -> None:
    root = tmp_path / "store"
    killed = FakeStream(num_items=12, shard_size=3, fail_after=2)
    with pytest.raises(RuntimeError, match="simulated kill"):
        write_store(killed, root, progress=False)
    assert killed.calls == [[0, 1, 2, 3]]
    assert not root.exists()
    with pytest.raises(StoreError):
        ShardStore(root)
    [staging] = staging_dirs(tmp_path)
    assert staging.name == ".store.staging-fp-a"
    assert sorted(p.name for p in staging.iterdir() if p.name.startswith("shard-")) == ["shard-00000",
                                                                                      "shard-00001"]

    resumed = FakeStream(num_items=12, shard_size=3)
    write_store(resumed, root, progress=False)
    assert resumed.calls == [[2, 3]]
    store = ShardStore(root)
    assert_content(store, range(12))
    assert store.shard_counts == [3, 3, 3, 3]
    assert staging_dirs(tmp_path) == []

    # same final content as a write that never stopped
    write_store(FakeStream(num_items=12, shard_size=3), tmp_path / "fresh", progress=False)
    fresh = ShardStore(tmp_path / "fresh")
    assert json.loads((root / "meta.json").read_text()) == json.loads((tmp_path / "fresh" / "meta.json").read_text())
    for a, b in zip(store.iter_shards(), fresh.iter_shards(), strict=True):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])


def test_resume_keeps_skipped_entries_of_finished_shards(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with pytest.raises(RuntimeError):
        write_store(FakeStream(num_items=12, shard_size=3, skip=[1, 3, 4, 5], fail_after=2), root, progress=False)
    resumed = FakeStream(num_items=12, shard_size=3, skip=[1, 3, 4, 5])
    write_store(resumed, root, progress=False)
    assert resumed.calls == [[2, 3]]
    store = ShardStore(root)
    assert [s["id"] for s in store.skipped] == ["img001", "img003", "img004", "img005"]
    assert_content(store, [0, 2, 6, 7, 8, 9, 10, 11])


def test_different_fingerprint_does_not_reuse(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with pytest.raises(RuntimeError):
        write_store(FakeStream(fp="fp-a", fail_after=2), root, progress=False)
    other = FakeStream(fp="fp-b", offset=0.5)
    write_store(other, root, progress=False)
    assert other.calls == [[0, 1, 2, 3]]
    store = ShardStore(root)
    assert store.fingerprint == "fp-b"
    assert_content(store, range(12), offset=0.5)


def _truncate_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _truncate_header(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _delete(path: Path) -> None:
    path.unlink()


def _wrong_shape(path: Path) -> None:
    np.save(path, np.zeros((3, C, H, W + 1), np.float32))


def _wrong_dtype(path: Path) -> None:
    np.save(path, np.zeros((3, C, H, W), np.float64))


def _bad_ids(path: Path) -> None:
    (path.parent / "ids.json").write_text("{not json")


def _missing_ids(path: Path) -> None:
    (path.parent / "ids.json").unlink()


def _ids_not_a_mapping(path: Path) -> None:
    (path.parent / "ids.json").write_text("[]")


def _ids_without_skipped(path: Path) -> None:
    info = json.loads((path.parent / "ids.json").read_text())
    (path.parent / "ids.json").write_text(json.dumps({"ids": info["ids"]}))


@pytest.mark.parametrize("corrupt", [_truncate_half, _truncate_header, _empty, _delete, _wrong_shape, _wrong_dtype,
                                     _bad_ids, _missing_ids, _ids_not_a_mapping, _ids_without_skipped])
def test_corrupt_leftover_shard_is_recomputed(tmp_path: Path, corrupt) -> None:
    root = tmp_path / "store"
    with pytest.raises(RuntimeError):
        write_store(FakeStream(fail_after=2), root, progress=False)
    [staging] = staging_dirs(tmp_path)
    corrupt(staging / "shard-00001" / "feat.npy")
    resumed = FakeStream()
    write_store(resumed, root, progress=False)
    assert resumed.calls == [[1, 2, 3]]
    assert_content(ShardStore(root), range(12))


def test_leftover_temporary_shard_folder_is_ignored(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with pytest.raises(RuntimeError):
        write_store(FakeStream(fail_after=2), root, progress=False)
    [staging] = staging_dirs(tmp_path)
    # a shard killed while being written: only its temporary folder exists
    tmp = staging / ".shard-00002.tmp"
    tmp.mkdir()
    np.save(tmp / "feat.npy", np.zeros((1,), np.float32))
    resumed = FakeStream()
    write_store(resumed, root, progress=False)
    assert resumed.calls == [[2, 3]]
    assert_content(ShardStore(root), range(12))


# ------------------------------------------------------------------------------------------------------ readers
def test_reader_without_meta_raises_naming_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "not-a-store"
    folder.mkdir()
    (folder / "shard-00000").mkdir()
    with pytest.raises(StoreError, match="not-a-store") as info:
        ShardStore(folder)
    assert "meta.json" in str(info.value)
    with pytest.raises(StoreError, match="missing-folder"):
        ShardStore(tmp_path / "missing-folder")


def test_reader_refuses_unreadable_or_foreign_meta(tmp_path: Path) -> None:
    write_store(FakeStream(num_items=3), tmp_path / "store", progress=False)
    meta_path = tmp_path / "store" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(StoreError, match="format_version 99"):
        ShardStore(tmp_path / "store")
    meta_path.write_text("{truncated")
    with pytest.raises(StoreError, match="unreadable"):
        ShardStore(tmp_path / "store")


def test_replacing_a_store_keeps_the_old_one_until_the_new_one_is_complete(tmp_path: Path) -> None:
    root = tmp_path / "store"
    write_store(FakeStream(num_items=6, fp="old"), root, progress=False)
    assert_content(ShardStore(root), range(6))

    seen = []

    def old_store_still_there(index: int) -> None:
        store = ShardStore(root)
        assert store.fingerprint == "old"
        assert_content(store, range(6))
        seen.append(index)

    # a replacement killed midway leaves the old store whole
    with pytest.raises(RuntimeError):
        write_store(FakeStream(num_items=9, fp="new", offset=0.25, fail_after=2, on_shard=old_store_still_there),
                    root, progress=False)
    assert_content(ShardStore(root), range(6))

    # a replacement that completes wins, and the old store was readable all the while
    write_store(FakeStream(num_items=9, fp="new", offset=0.25, on_shard=old_store_still_there), root,
                progress=False)
    assert seen == [0, 1, 2]
    store = ShardStore(root)
    assert store.fingerprint == "new"
    assert_content(store, range(9), offset=0.25)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # no staging or old folders left over


def test_rewriting_with_the_same_fingerprint(tmp_path: Path) -> None:
    root = tmp_path / "store"
    write_store(FakeStream(num_items=6), root, progress=False)
    again = FakeStream(num_items=6)
    write_store(again, root, progress=False)
    assert_content(ShardStore(root), range(6))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


# --------------------------------------------------------------------------------------------- ShardStoreDataset
def versions_of(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


def test_dataset_unversioned_save_load(tmp_path: Path) -> None:
    dataset = ShardStoreDataset(filepath=str(tmp_path / "feat"), progress=False)
    assert not dataset.exists()
    dataset.save(FakeStream(num_items=5))
    assert dataset.exists()
    store = dataset.load()
    assert isinstance(store, ShardStore)
    assert_content(store, range(5))
    preview = dataset.preview(nrows=2)
    assert preview["items"] == 5 and preview["first_ids"] == ["img000", "img001"]
    assert preview["index"] == ["feat", "img", "n"]


def test_dataset_versioned_save_load_two_versions(tmp_path: Path) -> None:
    filepath = tmp_path / "feat"
    dataset = ShardStoreDataset(filepath=str(filepath), version=Version(None, None), progress=False)
    assert not dataset.exists()
    dataset.save(FakeStream(num_items=5, fp="one"))
    assert dataset.exists()
    [first] = versions_of(filepath)
    assert (filepath / first / "feat" / "meta.json").is_file()
    assert_content(dataset.load(), range(5))
    # the version is a record of the data, which lives content-addressed in .stores/<fingerprint>
    assert [p.name for p in (filepath / first / "feat").iterdir()] == ["meta.json"]
    assert dataset.load().data_root.resolve() == (filepath / ".stores" / "one").resolve()

    time.sleep(0.01)  # versions are millisecond timestamps
    dataset.save(FakeStream(num_items=7, fp="two", offset=0.5))
    versions = versions_of(filepath)
    assert len(versions) == 2 and versions[0] == first
    latest = ShardStoreDataset(filepath=str(filepath), version=Version(None, None), progress=False).load()
    assert latest.fingerprint == "two"
    assert_content(latest, range(7), offset=0.5)
    assert_content(dataset.load(), range(7), offset=0.5)
    pinned = ShardStoreDataset(filepath=str(filepath), version=Version(first, None), progress=False).load()
    assert_content(pinned, range(5))
    assert staging_dirs(tmp_path) == [] and staging_dirs(filepath / ".stores") == []
    assert sorted(p.name for p in (filepath / ".stores").iterdir()) == ["one", "two"]


def test_dataset_killed_versioned_save_resumes(tmp_path: Path) -> None:
    filepath = tmp_path / "feat"
    killed = FakeStream(fail_after=2)
    with pytest.raises(DatasetError, match="simulated kill"):
        ShardStoreDataset(filepath=str(filepath), version=Version(None, None), progress=False).save(killed)
    # nothing was published as a version; the finished shards wait in the dataset's store pool
    assert versions_of(filepath) == []
    [staging] = staging_dirs(filepath / ".stores")
    assert staging.name == ".fp-a.staging-fp-a"
    assert (staging / "shard-00000").is_dir() and (staging / "shard-00001").is_dir()

    dataset = ShardStoreDataset(filepath=str(filepath), version=Version(None, None), progress=False)
    with pytest.raises(DatasetError):
        dataset.load()
    resumed = FakeStream()
    dataset.save(resumed)
    assert resumed.calls == [[2, 3]]
    assert len(versions_of(filepath)) == 1
    assert_content(dataset.load(), range(12))
    assert staging_dirs(filepath / ".stores") == []


# ------------------------------------------------------------------------------- temporaries and concurrent writers
def test_finished_store_holds_no_temporaries_of_killed_writes(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with pytest.raises(RuntimeError):
        write_store(FakeStream(fail_after=2), root, progress=False)
    [staging] = staging_dirs(tmp_path)
    # what killed writers left: a shard being written, a meta file being written, a work folder of a dead pid
    (staging / ".shard-00001.tmp").mkdir()
    (staging / "meta.json.tmp-4194304").write_text("{")
    dead = tmp_path / ".store.tmp-4194304"
    (dead / "shard-00003").mkdir(parents=True)
    # and an unfinished write under another fingerprint, made obsolete by the write that completes
    with pytest.raises(RuntimeError):
        write_store(FakeStream(fp="fp-b", fail_after=1), root, progress=False)
    write_store(FakeStream(), root, progress=False)
    assert sorted(p.name for p in root.iterdir()) == ["meta.json"] + [f"shard-0000{i}" for i in range(4)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    assert_content(ShardStore(root), range(12))


def test_a_second_writer_of_the_same_store_fails_clearly_and_leaves_the_first_store_whole(tmp_path: Path) -> None:
    """Two runs writing one store at once: the one that finishes second fails with a StoreError (not a
    FileNotFoundError, which Kedro reports as "a file with the same name already exists"), and puts nothing into the
    store the first one finished."""
    root = tmp_path / "store"

    def other_run_finishes(index: int) -> None:
        if index == 1:
            write_store(FakeStream(), root, progress=False)

    with pytest.raises(StoreError, match="another process wrote this store at the same time"):
        write_store(FakeStream(on_shard=other_run_finishes), root, progress=False)
    assert sorted(p.name for p in root.iterdir()) == ["meta.json"] + [f"shard-0000{i}" for i in range(4)]
    assert_content(ShardStore(root), range(12))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


# ---------------------------------------------------------------------------------------------------------- reuse
def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_a_complete_store_of_the_same_fingerprint_is_reused(tmp_path: Path) -> None:
    """write_store into a folder that holds the stream's fingerprint computes nothing and changes nothing; another
    fingerprint replaces it."""
    root = tmp_path / "store"
    write_store(FakeStream(), root, progress=False)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    again = FakeStream()
    write_store(again, root, progress=False)
    assert again.calls == []
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    changed = FakeStream(fp="fp-b", offset=0.5)
    write_store(changed, root, progress=False)
    assert changed.calls == [[0, 1, 2, 3]]
    assert_content(ShardStore(root), range(12), offset=0.5)


def test_versioned_saves_of_unchanged_data_write_only_a_record(tmp_path: Path) -> None:
    """A second save of the same fingerprint computes nothing and adds a record of a few kB that reads the same data;
    a changed stream (new fingerprint) is computed into its own pooled store, and older records still read theirs."""
    filepath = tmp_path / "feat"
    first = FakeStream()
    ShardStoreDataset(filepath=str(filepath), version=Version(None, None), progress=False).save(first)
    pool_bytes = folder_bytes(filepath)
    time.sleep(0.01)
    again = FakeStream()
    ShardStoreDataset(filepath=str(filepath), version=Version(None, None), progress=False).save(again)
    assert first.calls == [[0, 1, 2, 3]] and again.calls == []
    old, new = versions_of(filepath)
    assert folder_bytes(filepath / new) < 5_000 < pool_bytes
    for version in (old, new):
        assert_content(ShardStoreDataset(filepath=str(filepath), version=Version(version, None)).load(), range(12))
    time.sleep(0.01)
    changed = FakeStream(fp="fp-b", offset=0.5)
    ShardStoreDataset(filepath=str(filepath), version=Version(None, None), progress=False).save(changed)
    assert changed.calls == [[0, 1, 2, 3]]
    assert sorted(p.name for p in (filepath / ".stores").iterdir()) == ["fp-a", "fp-b"]
    assert_content(ShardStoreDataset(filepath=str(filepath), version=Version(None, None)).load(), range(12), 0.5)
    assert_content(ShardStoreDataset(filepath=str(filepath), version=Version(old, None)).load(), range(12))


def test_a_record_whose_data_is_gone_fails_clearly(tmp_path: Path) -> None:
    filepath = tmp_path / "feat"
    ShardStoreDataset(filepath=str(filepath), version=Version(None, None), progress=False).save(FakeStream())
    [version] = versions_of(filepath)
    shutil.rmtree(filepath / ".stores" / "fp-a")
    with pytest.raises(StoreError, match=r"meta.json records data in .*fp-a, which is missing or holds other data"):
        ShardStore(filepath / version / "feat")


def test_reused_data_takes_the_lineage_of_the_run_that_reuses_it(tmp_path: Path) -> None:
    """Unchanged data of a new ingestion (e.g. the val images when a train file changed): the data is reused, and
    the new record carries the new ingestion fingerprint; the old record keeps its own."""
    filepath = tmp_path / "images"
    old_stream, new_stream = FakeStream(), FakeStream()
    old_stream.attrs = {**old_stream.attrs, INGESTION: "old"}
    new_stream.attrs = {**new_stream.attrs, INGESTION: "new"}
    ShardStoreDataset(filepath=str(filepath), version=Version(None, None), progress=False).save(old_stream)
    time.sleep(0.01)
    ShardStoreDataset(filepath=str(filepath), version=Version(None, None), progress=False).save(new_stream)
    assert new_stream.calls == []
    old, new = versions_of(filepath)
    assert ShardStore(filepath / old / "images").attrs[INGESTION] == "old"
    assert ShardStore(filepath / new / "images").attrs[INGESTION] == "new"
    root = tmp_path / "plain"
    write_store(old_stream, root, progress=False)
    write_store(new_stream, root, progress=False)
    assert ShardStore(root).attrs[INGESTION] == "new" and new_stream.calls == []
