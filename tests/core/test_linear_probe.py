"""The supervised linear probe learns a linearly separable labelling and is scored like every method."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from unseg.core.evaluate import CentroidPredictionStream, confusion_of, method_scores
from unseg.core.linear_probe import LinearProbeConfig, _batches, fit_linear_probe
from unseg.core.store import FieldSpec, Shard, ShardStore, write_store

K, C, GRID, SIZE = 3, 6, 4, 8


class _Stream:
    def __init__(self, fields: dict[str, FieldSpec], arrays: dict[str, np.ndarray], name: str) -> None:
        self.fields, self.arrays = fields, arrays
        self.attrs: dict[str, object] = {}
        self.fingerprint = name
        self.num_shards = 2

    def iter_shards(self, todo: Sequence[int]) -> Iterator[Shard]:
        for index in todo:
            sl = slice(index * 4, (index + 1) * 4)
            yield Shard(index, [f"im{i}" for i in range(8)][sl], {k: v[sl] for k, v in self.arrays.items()})


@pytest.fixture
def planted(tmp_path: Path) -> tuple[ShardStore, ShardStore]:
    """8 images; each 2x2 block of the 4x4 grid has a class; features = one-hot(class) * 3 + noise, labels at 8x8."""
    rng = np.random.default_rng(0)
    classes = rng.integers(0, K, size=(8, GRID // 2, GRID // 2))
    grid = classes.repeat(2, axis=1).repeat(2, axis=2)                       # (8, 4, 4)
    feats = np.eye(C, dtype=np.float32)[grid].transpose(0, 3, 1, 2) * 3.0    # (8, C, 4, 4)
    feats += rng.normal(0, 0.1, feats.shape).astype(np.float32)
    labels = grid.repeat(2, axis=1).repeat(2, axis=2).astype(np.uint8)       # (8, 8, 8)
    labels[:, 0, 0] = 255                                                    # ignored pixels
    write_store(_Stream({"feat": FieldSpec("float16", (C, GRID, GRID))}, {"feat": feats}, "f"), tmp_path / "f",
                progress=False)
    images = np.zeros((8, SIZE, SIZE, 3), np.uint8)
    write_store(_Stream({"image": FieldSpec("uint8", (SIZE, SIZE, 3)), "label": FieldSpec("uint8", (SIZE, SIZE))},
                        {"image": images, "label": labels}, "l"), tmp_path / "l", progress=False)
    return ShardStore(tmp_path / "f"), ShardStore(tmp_path / "l")


def test_probe_learns_a_linearly_separable_labelling(planted: tuple[ShardStore, ShardStore], tmp_path: Path) -> None:
    features, labels = planted
    probe = fit_linear_probe(features, labels, K, LinearProbeConfig(epochs=60, lr=0.05, batch_size=4),
                             torch.device("cpu"))
    assert probe.weight.shape == (K, C, 1, 1) and not probe.weight.requires_grad
    stream = CentroidPredictionStream(features, "feat", False, probe.weight[:, :, 0, 0].numpy(), "linear",
                                      (SIZE, SIZE), torch.device("cpu"), bias=probe.bias.numpy())
    write_store(stream, tmp_path / "pred", progress=False)
    scores = method_scores("linear_probe", confusion_of(ShardStore(tmp_path / "pred"), labels, K, K), ["a", "b", "c"])
    # the probe predicts class ids directly: the Hungarian mapping must come out as the identity
    assert scores["mapping"] == [0, 1, 2]
    assert scores["acc"] > 95.0


def test_probe_is_deterministic_per_seed(planted: tuple[ShardStore, ShardStore]) -> None:
    features, labels = planted
    config = LinearProbeConfig(epochs=2, batch_size=4, seed=3)
    a = fit_linear_probe(features, labels, K, config, torch.device("cpu"))
    b = fit_linear_probe(features, labels, K, config, torch.device("cpu"))
    assert torch.equal(a.weight, b.weight)


def test_probe_needs_labels_and_matching_images(planted: tuple[ShardStore, ShardStore]) -> None:
    features, labels = planted
    with pytest.raises(ValueError, match="needs train labels"):
        fit_linear_probe(features, features, K, LinearProbeConfig(), torch.device("cpu"))
    with pytest.raises(ValueError, match="epochs"):
        LinearProbeConfig(epochs=0)


def test_streamed_probe_equals_an_in_memory_one(planted: tuple[ShardStore, ShardStore],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The streamed probe (one shard in memory) trains exactly as a probe over the whole split held in memory, with
    the same batches in the same order: shards in a seeded random order, items shuffled within each shard. The
    batches are made lazily: the first one has read one shard."""
    features, labels = planted
    config = LinearProbeConfig(epochs=3, lr=0.05, batch_size=3, seed=4)
    feats = np.concatenate([np.asarray(s["feat"]) for s in features.iter_shards(["feat"])]).astype(np.float32)
    gts = np.concatenate([np.asarray(s["label"]) for s in labels.iter_shards(["label"])]).astype(np.int64)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    probe = torch.nn.Conv2d(C, K, kernel_size=1)
    optimiser = torch.optim.Adam(probe.parameters(), lr=config.lr)
    for _ in range(config.epochs):
        for shard in rng.permutation(2):
            order = shard * 4 + rng.permutation(4)
            for start in range(0, 4, config.batch_size):
                rows = order[start:start + config.batch_size]
                y = torch.from_numpy(gts[rows])
                y = torch.where(y < K, y, torch.full_like(y, -100))
                logits = torch.nn.functional.interpolate(probe(torch.from_numpy(feats[rows])), size=(SIZE, SIZE),
                                                         mode="bilinear", align_corners=False)
                loss = torch.nn.functional.cross_entropy(logits, y, ignore_index=-100)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
    reads: list[int] = []
    real_shard = features.shard
    monkeypatch.setattr(features, "shard", lambda index, names=None: reads.append(index) or real_shard(index, names))
    streamed = fit_linear_probe(features, labels, K, config, torch.device("cpu"))
    torch.testing.assert_close(streamed.weight, probe.weight.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(streamed.bias, probe.bias.detach(), rtol=1e-5, atol=1e-6)
    assert len(reads) == 2 * config.epochs  # each shard once per epoch
    reads.clear()
    next(_batches(features, labels, 3, np.random.default_rng(0)))
    assert len(reads) == 1
