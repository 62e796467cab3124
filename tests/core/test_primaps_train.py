"""PriMaPs-EM training on tiny synthetic stores: EM improves on its initialisation, resumes exactly after a kill,
and fails clearly; the student's sources (cached, augmented online) and the prediction stream."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from unseg.core.backbones import Backbone, BackboneCfg
from unseg.core.metrics import confusion_matrix, scores_from_confusion
from unseg.core.primaps.augment import augment_batch
from unseg.core.primaps.crf import CRFConfig
from unseg.core.primaps.em import upsampled_logits
from unseg.core.primaps.predict import PrototypePredictionStream, val_scores
from unseg.core.primaps.prototypes import Prototypes
from unseg.core.primaps.sources import BackboneFeatures, StoreFeatures
from unseg.core.primaps.train import EMConfig, EMData, fit_em
from unseg.core.store import FieldSpec, Shard, ShardStore, write_store

K, C, GRID, SCALE, N = 3, 8, 8, 2, 24
CPU = torch.device("cpu")


class ArrayStreamOf:
    """A store's content given as whole arrays, cut into shards of 8."""

    def __init__(self, arrays: dict[str, np.ndarray], attrs: dict[str, Any] | None = None) -> None:
        self.arrays = arrays
        count = len(next(iter(arrays.values())))
        self.ids = [f"img{i:03d}" for i in range(count)]
        self.fields = {k: FieldSpec(str(v.dtype), tuple(v.shape[1:])) for k, v in arrays.items()}
        self.attrs = attrs or {}
        self.fingerprint = str(abs(hash(tuple(v.tobytes()[:64] for v in arrays.values()))))
        self.num_shards = (count + 7) // 8

    def iter_shards(self, todo: Sequence[int]) -> Iterator[Shard]:
        for i in todo:
            yield Shard(i, self.ids[8 * i:8 * i + 8], {k: v[8 * i:8 * i + 8] for k, v in self.arrays.items()})


def store(tmp: Path, name: str, **arrays: np.ndarray) -> ShardStore:
    write_store(ArrayStreamOf(arrays), tmp / name, progress=False)
    return ShardStore(tmp / name)


def scenes(seed: int, count: int = N, noise: float = 1.3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Images of 2-3 vertical bands of classes; noisy features of overlapping class means; masks = the bands.

    With the default noise the classes overlap; at noise 0.5 they are separable (the means lie 2 sqrt 2 apart).

    Returns:
        features (n, C, GRID, GRID) float16, labels (n, H, W) uint8 at H = GRID * SCALE, masks (n, H, W) uint8,
        class means (K, C).
    """
    rng = np.random.default_rng(seed)
    means = np.eye(K, C) * 2.0 + 1.0  # overlapping: every class shares the all-ones component
    feats, labels, masks = [], [], []
    for _ in range(count):
        cuts = np.sort(rng.choice(np.arange(2, GRID - 1), size=rng.integers(1, 3), replace=False))
        band = np.searchsorted(cuts, np.arange(GRID), side="right")  # band id per column
        classes = rng.choice(K, size=band.max() + 1, replace=band.max() + 1 > K)
        label = np.repeat(classes[band][None], GRID, 0)
        jitter = rng.normal(0, noise, (GRID, GRID, C))
        feats.append((means[label] + jitter).transpose(2, 0, 1))
        labels.append(np.kron(label, np.ones((SCALE, SCALE), int)))
        masks.append(np.kron(np.repeat(band[None], GRID, 0), np.ones((SCALE, SCALE), int)))
    return (np.stack(feats).astype(np.float16), np.stack(labels).astype(np.uint8), np.stack(masks).astype(np.uint8),
            means)


def agreement(model: Prototypes, features: np.ndarray, labels: np.ndarray) -> float:
    """Hungarian-matched pixel accuracy of the model's argmax against the ground truth."""
    x = torch.from_numpy(features.astype(np.float32))
    pred = upsampled_logits(model, x, labels.shape[1:]).argmax(1).numpy()
    return scores_from_confusion(confusion_matrix(labels, pred, K, K)).acc


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("em")
    feats, labels, masks, means = scenes(0)
    images = np.zeros((N, GRID * SCALE, GRID * SCALE, 3), np.uint8)
    return {"tmp": tmp, "feats": feats, "labels": labels, "means": means,
            "feat": store(tmp, "feat", feat=feats), "masks": store(tmp, "masks", mask=masks),
            "images": store(tmp, "images", image=images, label=labels)}


def config(**overrides: Any) -> EMConfig:
    values = {"num_prototypes": K, "epochs": 6, "batch_size": 8, "lr": 0.02, "init": "centroids", "ema_every": 2,
              "seed": 0}
    return EMConfig(**{**values, **overrides})


def rough_centroids(means: np.ndarray) -> np.ndarray:
    """Unit class means, class 0's drifted most of the way towards class 1: a poor but not hopeless start."""
    start = means.copy()
    start[0] = 0.4 * means[0] + 0.6 * means[1]
    return (start / np.linalg.norm(start, axis=1, keepdims=True)).astype(np.float32)


def emdata(data: dict[str, Any]) -> EMData:
    source = StoreFeatures(data["feat"], CPU)
    return EMData(source, source, data["masks"], np.zeros((0, C), np.float32))


def test_short_em_run_beats_its_initialisation(data: dict[str, Any]) -> None:
    start = rough_centroids(data["means"])
    before = agreement(Prototypes(torch.from_numpy(start)), data["feats"], data["labels"])
    result = fit_em(emdata(data), config(), CPU, centroids=start)
    after = agreement(result.teacher, data["feats"], data["labels"])
    assert before < 81.0 and after > before + 3.0, (before, after)
    assert len(result.history) == 1 + 6
    assert result.steps == 6 * 3 and result.teacher_updates == 9
    record = result.history[-1]
    assert set(record) == {"loss", "pseudo_label_coverage", "teacher_student_agreement"}
    assert record["pseudo_label_coverage"] == pytest.approx(1.0)
    assert 0.0 <= record["teacher_student_agreement"] <= 1.0


def test_em_is_near_perfect_on_separable_features(tmp_path: Path) -> None:
    """Accuracy floor: on separable classes whose masks are the true bands, EM from the rough start ends >= 99%."""
    feats, labels, masks, means = scenes(0, noise=0.5)
    source = StoreFeatures(store(tmp_path, "feat", feat=feats), CPU)
    start = rough_centroids(means)
    before = agreement(Prototypes(torch.from_numpy(start)), feats, labels)
    result = fit_em(EMData(source, source, store(tmp_path, "masks", mask=masks), np.zeros((0, C), np.float32)),
                    config(), CPU, centroids=start)
    assert before < 96.0
    assert agreement(result.teacher, feats, labels) >= 99.0
    assert agreement(result.student, feats, labels) >= 99.0


def test_pca_initialisation_with_warmup(data: dict[str, Any]) -> None:
    source = StoreFeatures(data["feat"], CPU)
    sample = data["feat"].sample_vectors("feat", 2000, 0)
    result = fit_em(EMData(source, source, data["masks"], sample), config(init="pca", warmup_epochs=2, epochs=1),
                    CPU)
    assert len(result.warmup) == 2 and all(np.isfinite(result.warmup))
    assert result.teacher.direction.shape == (K, C)


def test_resume_after_a_kill_repeats_the_uninterrupted_run(data: dict[str, Any], tmp_path: Path) -> None:
    start = rough_centroids(data["means"])
    full = fit_em(emdata(data), config(epochs=4), CPU, tmp_path / "a", centroids=start)

    class Killed(RuntimeError):
        pass

    def kill_after_two(model: Prototypes) -> dict[str, float]:
        kill_after_two.calls += 1  # type: ignore[attr-defined]
        if kill_after_two.calls == 4:  # type: ignore[attr-defined]  # init, epoch 1, 2 saved; dies in epoch 3
            raise Killed
        return {}

    kill_after_two.calls = 0  # type: ignore[attr-defined]
    with pytest.raises(Killed):
        fit_em(emdata(data), config(epochs=4), CPU, tmp_path / "b", centroids=start, monitor=kill_after_two)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["epoch-0002.pt"]
    resumed = fit_em(emdata(data), config(epochs=4), CPU, tmp_path / "b", centroids=start)
    torch.testing.assert_close(resumed.teacher.direction, full.teacher.direction)
    torch.testing.assert_close(resumed.student.gain, full.student.gain)
    assert resumed.steps == full.steps and len(resumed.history) == len(full.history)
    # a finished run is not trained again
    again = fit_em(emdata(data), config(epochs=4), CPU, tmp_path / "b", centroids=start)
    torch.testing.assert_close(again.teacher.direction, full.teacher.direction)


def test_unreadable_checkpoint_is_skipped(data: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "epoch-0003.pt").write_bytes(b"half a file")
    result = fit_em(emdata(data), config(epochs=1), CPU, tmp_path / "run",
                    centroids=rough_centroids(data["means"]))
    assert result.steps == 3


def test_images_without_proposals_are_skipped_and_counted(data: dict[str, Any], tmp_path: Path) -> None:
    masks = np.asarray(np.concatenate([s["mask"] for s in data["masks"].iter_shards()])).copy()
    masks[:5] = 255
    source = StoreFeatures(data["feat"], CPU)
    result = fit_em(EMData(source, source, store(tmp_path, "m", mask=masks), np.zeros((0, C))), config(epochs=1),
                    CPU, centroids=rough_centroids(data["means"]))
    assert result.skipped == [f"img{i:03d}" for i in range(5)]
    with pytest.raises(ValueError, match="no train image has a mask proposal"):
        fit_em(EMData(source, source, store(tmp_path, "none", mask=np.full_like(masks, 255)), np.zeros((0, C))),
               config(epochs=1), CPU, centroids=rough_centroids(data["means"]))


def test_bad_initialisation_raises(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="needs the cluster centres"):
        fit_em(emdata(data), config(), CPU)
    with pytest.raises(ValueError, match="given centroids have shape"):
        fit_em(emdata(data), config(), CPU, centroids=np.zeros((K + 1, C), np.float32))
    source = StoreFeatures(data["feat"], CPU)
    with pytest.raises(ValueError, match="only 2 feature vectors"):
        fit_em(EMData(source, source, data["masks"], np.ones((2, C))), config(init="pca"), CPU)


@pytest.mark.parametrize("bad", [{"init": "random"}, {"epochs": -1}, {"batch_size": 0}, {"ema_max_decay": 1.0},
                                 {"lr": 0.0}, {"num_prototypes": 0}])
def test_bad_em_settings_raise(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="primaps"):
        config(**bad)


# ------------------------------------------------------------------------------------ sources and predictions
def tiny_backbone() -> Backbone:
    cfg = BackboneCfg("tiny", dim=4, stride=2, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_multiple=2,
                      weights_source="none")
    torch.manual_seed(0)
    return Backbone(cfg, nn.Conv2d(3, 4, kernel_size=2, stride=2)).eval().requires_grad_(False)


def test_augmentation_is_seeded_photometric_and_in_range() -> None:
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    a = augment_batch(images, torch.Generator().manual_seed(1))
    b = augment_batch(images, torch.Generator().manual_seed(1))
    c = augment_batch(images, torch.Generator().manual_seed(2))
    assert a.shape == images.shape and a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c) and not torch.equal(a, images)


def test_backbone_source_augments_and_flip_averages(data: dict[str, Any], tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 255, (N, 16, 16, 3), dtype=np.uint8)
    image_store = store(tmp_path, "imgs", image=images)
    plain = BackboneFeatures(image_store, tiny_backbone(), CPU)(range(4))
    assert plain.shape == (4, 4, 8, 8)
    flip = BackboneFeatures(image_store, tiny_backbone(), CPU, flip_average=True)(range(4))
    assert flip.shape == plain.shape and not torch.allclose(flip, plain)
    augmenting = BackboneFeatures(image_store, tiny_backbone(), CPU, augment=True)
    with pytest.raises(ValueError, match="needs a generator"):
        augmenting(range(4))
    assert not torch.allclose(augmenting(range(4), torch.Generator().manual_seed(0)), plain)


def test_online_student_trains(data: dict[str, Any], tmp_path: Path) -> None:
    """The student sees augmented images through a (tiny) backbone; the teacher the cached clean features."""
    images = np.random.default_rng(0).integers(0, 255, (N, 16, 16, 3), dtype=np.uint8)
    backbone = tiny_backbone()
    clean = BackboneFeatures(store(tmp_path, "imgs", image=images), backbone, CPU)
    feats = clean(range(N)).numpy().astype(np.float16)
    teacher = StoreFeatures(store(tmp_path, "f", feat=feats), CPU)
    student = BackboneFeatures(ShardStore(tmp_path / "imgs"), backbone, CPU, augment=True)
    result = fit_em(EMData(teacher, student, data["masks"], np.zeros((0, 4))),
                    config(epochs=1), CPU, centroids=np.eye(K, 4, dtype=np.float32))
    assert result.steps == 3 and np.isfinite(result.history[-1]["loss"])


def test_prediction_stream_and_monitoring_scores(data: dict[str, Any], tmp_path: Path) -> None:
    model = Prototypes(torch.from_numpy(data["means"].astype(np.float32)))
    source = StoreFeatures(data["feat"], CPU)
    images = np.random.default_rng(1).integers(0, 255, (N, 16, 16, 3), dtype=np.uint8)
    val_images = store(tmp_path, "val", image=images, label=data["labels"])
    for crf in (None, CRFConfig(iterations=2)):
        stream = PrototypePredictionStream(model.state(), source, val_images, crf, CPU, {"method": "t"})
        write_store(stream, tmp_path / f"pred-{crf is None}", progress=False)
        preds = ShardStore(tmp_path / f"pred-{crf is None}")
        assert preds.fields["pred"] == FieldSpec("uint8", (16, 16))
        assert preds.attrs["num_clusters"] == K and preds.ids == val_images.ids
        values = np.concatenate([s["pred"] for s in preds.iter_shards()])
        assert set(np.unique(values)) <= set(range(K))
    scores = val_scores(model, source, val_images, K)
    assert scores["val_acc"] == pytest.approx(agreement(model, data["feats"], data["labels"]))
    assert 0 <= scores["val_miou"] <= 100
