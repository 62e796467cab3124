"""The primaps pipeline (and the PiCIE + PriMaPs-EM combination) run by SequentialRunner on fake stores in tmp_path."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kedro.config import OmegaConfigLoader
from kedro.framework.project import configure_project
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline
from kedro.runner import SequentialRunner
from kedro_datasets.json import JSONDataset
from matplotlib.figure import Figure

from unseg.core.backbones import create_backbone
from unseg.core.features import FeatureStream
from unseg.core.metrics import confusion_matrix, scores_from_confusion
from unseg.core.store import FieldSpec, Shard, ShardStore, write_store
from unseg.datasets import ShardStoreDataset
from unseg.pipeline_registry import register_pipelines
from unseg.pipelines.primaps import create_picie_primaps_pipeline, create_pipeline
from unseg.pipelines.primaps.pipeline import em_pipeline, proposals_pipeline
from unseg.settings import CONFIG_LOADER_ARGS

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CROP, STRIDE, DIM, K, NUM_TRAIN, NUM_VAL = 32, 8, 16, 3, 12, 6
METHODS = ("primaps_em", "primaps_em_crf", "primaps_em_student")


class Arrays:
    """An ArrayStream over whole arrays, shards of 4."""

    def __init__(self, prefix: str, attrs: dict[str, Any], **arrays: np.ndarray) -> None:
        self.arrays = arrays
        self.ids = [f"{prefix}{i:03d}" for i in range(len(next(iter(arrays.values()))))]
        self.fields = {k: FieldSpec(str(v.dtype), tuple(v.shape[1:])) for k, v in arrays.items()}
        self.attrs = attrs
        self.fingerprint = f"{prefix}-{len(self.ids)}-{sorted(arrays)}-{attrs.get('backbone')}"
        self.num_shards = (len(self.ids) + 3) // 4

    def iter_shards(self, todo: Sequence[int]) -> Iterator[Shard]:
        for i in todo:
            yield Shard(i, self.ids[4 * i:4 * i + 4], {k: v[4 * i:4 * i + 4] for k, v in self.arrays.items()})


def scenes(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images split into a left and a right half of two of K classes (colour = class), and their labels."""
    rng = np.random.default_rng(seed)
    colours = np.array([[220, 40, 40], [40, 200, 40], [40, 40, 220]], np.uint8)
    labels = np.zeros((count, CROP, CROP), np.uint8)
    for i in range(count):
        left, right = rng.choice(K, 2, replace=False)
        labels[i, :, :CROP // 2], labels[i, :, CROP // 2:] = left, right
    return colours[labels], labels


def features_of(labels: np.ndarray, stride: int, dim: int, seed: int) -> np.ndarray:
    """Per-class orthogonal directions plus noise on the stride grid, float16 (n, dim, crop/stride, crop/stride)."""
    rng = np.random.default_rng(seed)
    directions = np.linalg.qr(rng.normal(size=(dim, K)))[0].T * 3.0
    grid = labels[:, stride // 2::stride, stride // 2::stride]
    feats = directions[grid] + rng.normal(0, 0.3, (*grid.shape, dim))
    return feats.transpose(0, 3, 1, 2).astype(np.float16)


def parameters(tmp: Path, **em: Any) -> dict[str, Any]:
    loader = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": "test"})
    params = copy.deepcopy(loader["parameters"])
    params["dataset"].update(crop=CROP, resize=CROP, num_classes=K, class_names=["r", "g", "b"])
    params["device"] = "cpu"
    params["primaps"]["em"].update({"epochs": 2, "warmup_epochs": 1, "batch_size": 4, "init_sample": 2000,
                                    "checkpoint_dir": str(tmp / "checkpoints"), **em})
    params["primaps"]["preview_images"] = 3
    return params


@pytest.fixture(scope="module")
def make_catalog(
        pipeline_param_datasets: Callable[[dict[str, Any]], dict[str, MemoryDataset]]) -> Callable[..., DataCatalog]:
    """`make_catalog(tmp, params, backbone="fake")`."""
    return lambda tmp, params, backbone="fake": build_catalog(tmp, params, pipeline_param_datasets(params), backbone)


def build_catalog(tmp: Path, params: dict[str, Any], param_sets: dict[str, MemoryDataset],
                  backbone: str) -> DataCatalog:
    """Fake upstream stores (train images WITHOUT labels: the pipeline must never need them) and outputs."""
    data = tmp / "data"
    train_images, train_labels = scenes(NUM_TRAIN, 0)
    val_images, val_labels = scenes(NUM_VAL, 1)
    feat_attrs = {"backbone": backbone, "stride": STRIDE, "dim": DIM}
    picie_attrs = {"backbone": "picie", "stride": 4, "dim": 128}
    upstream = {
        "prm_train_images": Arrays("t", {"split": "train"}, image=train_images),
        "prm_val_images": Arrays("v", {"split": "val"}, image=val_images, label=val_labels),
        "feat_train": Arrays("t", feat_attrs, feat=features_of(train_labels, STRIDE, DIM, 2)),
        "feat_val": Arrays("v", feat_attrs, feat=features_of(val_labels, STRIDE, DIM, 2)),
        "feat_picie_train": Arrays("t", picie_attrs, feat=features_of(train_labels, 4, 128, 3)),
        "feat_picie_val": Arrays("v", picie_attrs, feat=features_of(val_labels, 4, 128, 3)),
    }
    stores = {name: ShardStoreDataset(str(data / name), progress=False) for name in upstream}
    for name, stream in upstream.items():
        write_store(stream, data / name, progress=False)
    outputs = ["mi_primaps_train_masks"] + [f"{p}{m[len('primaps_em'):]}.val_predictions"
                                            for p in ("primaps_em", "picie_primaps_em") for m in METHODS]
    stores.update({name: ShardStoreDataset(str(data / name), progress=False) for name in outputs})
    centroids = np.linalg.qr(np.random.default_rng(3).normal(size=(128, K)))[0].T
    memory = {"picie.kmeans": MemoryDataset({"input": "feat", "metric": "cosine", "centroids": centroids.tolist()})}
    models = {f"{m}.{kind}": JSONDataset(filepath=str(data / f"{m}_{kind}.json"))
              for m in ("primaps_em", "picie_primaps_em") for kind in ("model", "training_metrics")}
    return DataCatalog({**stores, **memory, **models, **param_sets})


def run(pipe: Pipeline, catalog: DataCatalog) -> dict[str, Any]:
    outputs = SequentialRunner().run(pipe, catalog)
    return {name: dataset.load() for name, dataset in outputs.items()}


@pytest.fixture(scope="module")
def primaps_run(tmp_path_factory: pytest.TempPathFactory, make_catalog: Callable[..., DataCatalog]) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("primaps")
    catalog = make_catalog(tmp, parameters(tmp))
    frozen = proposals_pipeline() + em_pipeline("primaps_em", "feat_train", "feat_val")
    return {"tmp": tmp, "catalog": catalog, "outputs": run(frozen, catalog)}


def test_pipeline_nodes_and_free_inputs() -> None:
    frozen = proposals_pipeline() + em_pipeline("primaps_em", "feat_train", "feat_val")
    assert {n.name for n in frozen.nodes} == {"propose_masks", "report_proposals", "plot_proposals",
                                              "primaps_em.fit", "primaps_em.predict",
                                              "primaps_em.plot_training_curves"}
    assert {i for i in frozen.inputs() if not i.startswith("params:")} == {
        "prm_train_images", "prm_val_images", "feat_train", "feat_val"}
    assert {f"{m}.val_predictions" for m in METHODS} <= frozen.outputs()
    picie = create_picie_primaps_pipeline()
    assert {i for i in picie.inputs() if not i.startswith("params:")} == {
        "feat_picie_train", "feat_picie_val", "picie.kmeans", "mi_primaps_train_masks", "prm_train_images",
        "prm_val_images"}
    assert {f"picie_{m}.val_predictions" for m in METHODS} <= picie.outputs()
    assert not {n.name for n in picie.nodes} & {n.name for n in frozen.nodes}
    assert set(create_pipeline().nodes) == set(frozen.nodes)  # `primaps` runs without PiCIE
    configure_project("unseg")
    registered = register_pipelines()
    assert set(registered["picie_primaps"].nodes) == set(picie.nodes)
    assert set(registered["__default__"].nodes) >= set(frozen.nodes) | set(picie.nodes)


def test_masks_are_stored_one_label_map_per_train_image(primaps_run: dict[str, Any]) -> None:
    masks: ShardStore = primaps_run["catalog"].load("mi_primaps_train_masks")
    train = primaps_run["catalog"].load("prm_train_images")
    assert masks.ids == train.ids
    assert masks.fields == {"mask": FieldSpec("uint8", (CROP, CROP))}
    maps = np.concatenate([s["mask"] for s in masks.iter_shards()])
    assert (maps != 255).mean() > 0.5
    for label_map in maps:  # two halves, two masks, each inside one half
        ids = set(np.unique(label_map).tolist()) - {255}
        assert len(ids) >= 2
        for j in ids:
            columns = np.nonzero((label_map == j).any(0))[0]
            assert columns.max() < CROP // 2 + 2 or columns.min() >= CROP // 2 - 2
    metrics = primaps_run["outputs"]["primaps_proposal_metrics"]
    assert set(metrics) == {"primaps/masks_per_image", "primaps/empty_images", "primaps/mask_coverage"}
    assert metrics["primaps/empty_images"]["value"] == 0.0
    assert isinstance(primaps_run["outputs"]["rpt_primaps_masks_preview"], Figure)


def test_model_and_training_metrics(primaps_run: dict[str, Any]) -> None:
    outputs = primaps_run["outputs"]
    model = outputs["primaps_em.model_mlflow"]
    assert model == primaps_run["catalog"].load("primaps_em.model")
    assert model["num_prototypes"] == K and model["base"] == "frozen" and not model["online"]
    for role in ("teacher", "student"):
        assert np.asarray(model[role]["directions"]).shape == (K, DIM) and len(model[role]["gains"]) == K
    metrics = primaps_run["catalog"].load("primaps_em.training_metrics")
    for name in ("loss", "pseudo_label_coverage", "teacher_student_agreement"):
        assert [m["step"] for m in metrics[f"primaps/{name}"]] == [1, 2]
    curves = outputs["primaps_em.training_curves"]  # a panel per metric with two or more points
    assert isinstance(curves, Figure) and curves.get_suptitle() == "primaps_em training"
    assert {ax.get_title() for ax in curves.axes} == {k for k, v in metrics.items() if len(v) > 1} >= {
        "primaps/loss", "primaps/val_miou"}
    assert [m["step"] for m in metrics["primaps/val_miou"]] == [0, 1, 2]
    assert len(metrics["primaps/warmup_loss"]) == 1
    assert all(0 <= m["value"] <= 1 for m in metrics["primaps/pseudo_label_coverage"])


@pytest.mark.parametrize("method", METHODS)
def test_val_predictions_for_the_evaluation_template(primaps_run: dict[str, Any], method: str) -> None:
    preds: ShardStore = primaps_run["catalog"].load(f"{method}.val_predictions")
    val = primaps_run["catalog"].load("prm_val_images")
    assert preds.ids == val.ids
    assert preds.fields == {"pred": FieldSpec("uint8", (CROP, CROP))}
    assert preds.attrs["num_clusters"] == K
    values = np.concatenate([s["pred"] for s in preds.iter_shards()])
    assert set(np.unique(values).tolist()) <= set(range(K))


def hungarian_accuracy(preds: ShardStore, val: ShardStore) -> float:
    labels = np.concatenate([s["label"] for s in val.iter_shards(["label"])])
    values = np.concatenate([s["pred"] for s in preds.iter_shards()])
    return scores_from_confusion(confusion_matrix(labels, values, K, K)).acc


@pytest.mark.parametrize("method", METHODS)
def test_near_perfect_on_separable_features(primaps_run: dict[str, Any], method: str) -> None:
    """Orthogonal class directions with little noise and masks that follow the classes: the fitted prototypes
    segment val almost perfectly: measured 98.4 (teacher), 100.0 (+ CRF), 98.8 (student), 99.97 (on PiCIE-like
    features); the floor of 90 leaves room for the bilinear class boundaries of a stride-8 grid."""
    catalog = primaps_run["catalog"]
    assert hungarian_accuracy(catalog.load(f"{method}.val_predictions"), catalog.load("prm_val_images")) > 90.0


def test_rerun_resumes_from_the_finished_checkpoint(primaps_run: dict[str, Any]) -> None:
    catalog = primaps_run["catalog"]
    folders = [p for p in (primaps_run["tmp"] / "checkpoints").iterdir() if p.name.startswith("primaps_em-")]
    assert len(folders) == 1 and [p.name for p in folders[0].iterdir()] == ["epoch-0002.pt"]
    again = run(create_pipeline().only_nodes("primaps_em.fit"), catalog)
    assert again["primaps_em.model_mlflow"]["teacher"] == catalog.load("primaps_em.model")["teacher"]


def test_picie_combination(primaps_run: dict[str, Any]) -> None:
    outputs = run(create_picie_primaps_pipeline(), primaps_run["catalog"])
    model = outputs["picie_primaps_em.model_mlflow"]
    assert model["base"] == "picie" and model["init"] == "centroids" and model["feature_dim"] == 128
    assert "picie_primaps_em/loss" in primaps_run["catalog"].load("picie_primaps_em.training_metrics")
    for method in METHODS:
        name = f"picie_{method}.val_predictions"
        preds: ShardStore = primaps_run["catalog"].load(name)
        assert preds.fields == {"pred": FieldSpec("uint8", (CROP, CROP))} and preds.attrs["num_clusters"] == K
        assert hungarian_accuracy(preds, primaps_run["catalog"].load("prm_val_images")) > 90.0, name


def test_picie_base_refuses_online_augmentation(primaps_run: dict[str, Any], tmp_path: Path,
                                                 make_catalog: Callable[..., DataCatalog]) -> None:
    params = parameters(tmp_path)
    params["primaps"]["base"]["picie_primaps_em"]["augment"] = True
    catalog = make_catalog(tmp_path, params)
    catalog["mi_primaps_train_masks"] = MemoryDataset(primaps_run["catalog"].load("mi_primaps_train_masks"),
                                                      copy_mode="assign")
    with pytest.raises(Exception, match="only available for the frozen backbone"):
        SequentialRunner().run(create_picie_primaps_pipeline(), catalog)


def test_online_mode_runs_the_backbone(primaps_run: dict[str, Any], tmp_path: Path,
                                       make_catalog: Callable[..., DataCatalog]) -> None:
    """augment: true with a randomly initialised efficientnet_lite0 (no weights file needed)."""
    params = parameters(tmp_path, epochs=1)
    params["primaps"]["augment"] = True
    params["features"].update(backbone="efficientnet_lite0", pretrained=False, weights=None)
    catalog = make_catalog(tmp_path, params, backbone="efficientnet_lite0")
    backbone = create_backbone("efficientnet_lite0", pretrained=False)
    for split in ("train", "val"):  # cached clean features of that same backbone
        stream = FeatureStream(catalog.load(f"prm_{split}_images"), backbone, torch.device("cpu"), 8, "random")
        write_store(stream, tmp_path / "data" / f"feat_{split}", progress=False)
    outputs = run(create_pipeline() + create_picie_primaps_pipeline(), catalog)  # PiCIE's stays on cached features
    assert outputs["picie_primaps_em.model_mlflow"]["online"] is False
    assert outputs["primaps_em.model_mlflow"]["online"] is True
    assert outputs["primaps_em.model_mlflow"]["feature_dim"] == 152
    preds: ShardStore = catalog.load("primaps_em.val_predictions")
    assert preds.attrs["online"] is True and len(preds) == NUM_VAL
