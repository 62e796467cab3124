"""Tests of dense feature extraction into a feature store."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from unseg.core.backbones import Backbone, create_backbone
from unseg.core.features import FeatureStream, extract, images_to_tensor, weights_id
from unseg.core.store import FieldSpec, Shard, ShardStore, write_store

CPU = torch.device("cpu")


class ImageStream:
    """A prepared-image stream: `count` random uint8 images (side, side, 3) in shards of `shard_size`."""

    def __init__(self, count: int, side: int, shard_size: int, skip: Sequence[int] = ()) -> None:
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, (count, side, side, 3), dtype=np.uint8)
        self.count, self.shard_size, self.skip = count, shard_size, set(skip)
        self.fields = {"image": FieldSpec("uint8", (side, side, 3))}
        self.attrs = {"split": "val", "crop": side}
        self.fingerprint = f"images-{count}-{side}-{shard_size}-{sorted(self.skip)}"
        self.num_shards = (count + shard_size - 1) // shard_size

    def iter_shards(self, todo: Sequence[int]) -> Iterator[Shard]:
        for index in todo:
            kept = [i for i in range(index * self.shard_size, min((index + 1) * self.shard_size, self.count))
                    if i not in self.skip]
            yield Shard(index, [f"im{i}" for i in kept], {"image": self.images[kept]},
                        [{"id": f"im{i}", "path": f"im{i}.png", "problem": "bad"} for i in self.skip
                         if index * self.shard_size <= i < (index + 1) * self.shard_size])


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    return create_backbone("efficientnet_lite0", pretrained=False)


def image_store(tmp_path: Path, count: int = 5, side: int = 32, shard_size: int = 2, skip=()) -> ShardStore:
    stream = ImageStream(count, side, shard_size, skip)
    write_store(stream, tmp_path / "images", progress=False)
    return ShardStore(tmp_path / "images")


def test_images_to_tensor() -> None:
    images = np.array([[[[0, 128, 255]]]], np.uint8)  # (1, 1, 1, 3)
    tensor = images_to_tensor(images, CPU)
    assert tensor.shape == (1, 3, 1, 1) and tensor.dtype == torch.float32
    torch.testing.assert_close(tensor.flatten(), torch.tensor([0.0, 128 / 255, 1.0]))


@pytest.mark.parametrize("skip", [(), (2, 3)])
def test_feature_store_matches_the_backbone(tmp_path: Path, backbone: Backbone, skip) -> None:
    images = image_store(tmp_path, skip=skip)
    stream = FeatureStream(images, backbone, CPU, batch_size=3, weights_id="random")
    cfg = backbone.cfg
    assert stream.fields == {"feat": FieldSpec("float16", (cfg.dim, 32 // 8, 32 // 8))}
    assert stream.num_shards == images.num_shards
    write_store(stream, tmp_path / "feat", progress=False)
    feats = ShardStore(tmp_path / "feat")

    assert feats.fields == {"feat": FieldSpec("float16", (152, 4, 4))}
    assert feats.ids == images.ids
    assert feats.shard_counts == images.shard_counts
    assert feats.attrs == {"backbone": "efficientnet_lite0", "stride": 8, "dim": 152, "weights": "random",
                           "images": images.fingerprint, "split": "val"}
    stack = np.stack([images.item(i)["image"] for i in range(len(images))])
    with torch.inference_mode():
        direct = backbone(images_to_tensor(stack, CPU)).numpy()
    got = np.stack([feats.item(i)["feat"] for i in range(len(feats))])
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), direct, rtol=2e-3, atol=2e-3)
    assert np.isfinite(got).all()
    for image_id in feats.ids:  # by id too
        position = images.ids.index(image_id)
        np.testing.assert_allclose(feats.item(image_id)["feat"].astype(np.float32), direct[position],
                                   rtol=2e-3, atol=2e-3)


def test_feature_fingerprint_follows_images_and_weights(tmp_path: Path, backbone: Backbone) -> None:
    images = image_store(tmp_path)
    a = FeatureStream(images, backbone, CPU, batch_size=2, weights_id="random").fingerprint
    assert a == FeatureStream(images, backbone, CPU, batch_size=4, weights_id="random").fingerprint
    assert a != FeatureStream(images, backbone, CPU, batch_size=2, weights_id="imagenet").fingerprint
    other = image_store(tmp_path / "other", count=4)
    assert a != FeatureStream(other, backbone, CPU, batch_size=2, weights_id="random").fingerprint


@pytest.mark.parametrize("batch_size", [1, 2, 5, 8])
def test_extract_batches_agree(backbone: Backbone, batch_size: int) -> None:
    images = np.random.default_rng(1).integers(0, 256, (5, 16, 32, 3), dtype=np.uint8)
    out = extract(backbone, images, CPU, batch_size)
    assert out.dtype == np.float16 and out.shape == (5, 152, 2, 4)
    with torch.inference_mode():
        direct = backbone(images_to_tensor(images, CPU)).numpy()
    np.testing.assert_allclose(out.astype(np.float32), direct, rtol=2e-3, atol=2e-3)


def test_extract_nothing(backbone: Backbone) -> None:
    out = extract(backbone, np.zeros((0, 16, 32, 3), np.uint8), CPU, 4)
    assert out.shape == (0, 152, 2, 4) and out.dtype == np.float16


@pytest.mark.parametrize("side, grid", [(24, 2), (40, 4)])
def test_crop_not_a_multiple_is_resized_down(tmp_path: Path, backbone: Backbone, side: int, grid: int) -> None:
    """The backbone's policy: sides resized down to the nearest multiple of 16, so the grid is floor(side/16)*2."""
    images = image_store(tmp_path, count=2, side=side)
    stream = FeatureStream(images, backbone, CPU, batch_size=2, weights_id="random")
    assert stream.fields["feat"].shape == (152, grid, grid)
    write_store(stream, tmp_path / "feat", progress=False)
    assert ShardStore(tmp_path / "feat").item(0)["feat"].shape == (152, grid, grid)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_feature_stream_on_cuda(tmp_path: Path) -> None:
    cuda = torch.device("cuda")
    backbone = create_backbone("efficientnet_lite0")  # ImageNet weights: activations of a sensible scale
    images = image_store(tmp_path, count=4, side=32, shard_size=3)
    stack = np.stack([images.item(i)["image"] for i in range(len(images))])
    with torch.inference_mode():
        reference = backbone(images_to_tensor(stack, CPU)).numpy()
    write_store(FeatureStream(images, backbone, cuda, batch_size=2, weights_id="imagenet"), tmp_path / "feat",
                progress=False)
    feats = ShardStore(tmp_path / "feat")
    got = np.stack([feats.item(i)["feat"] for i in range(len(feats))]).astype(np.float32)
    assert got.shape == reference.shape and np.isfinite(got).all()
    # bf16 autocast on CUDA: close to the fp32 CPU result, not equal
    assert np.linalg.norm(got - reference) / np.linalg.norm(reference) < 0.05


def test_weights_id_changes_when_the_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    path.write_bytes(b"a")
    first = weights_id(path, True)
    path.write_bytes(b"bb")
    assert weights_id(path, True) != first and str(path) in first
    assert weights_id(None, True) == "default" and weights_id(None, False) == "random"
