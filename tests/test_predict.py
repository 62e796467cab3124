"""The predict pipeline on a small folder with one corrupt file: every readable image segmented, the bad one listed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from kedro.io import DatasetError
from PIL import Image

from unseg.core.backbones import create_backbone
from unseg.core.features import images_to_tensor
from unseg.core.kmeans import upsampled_scores
from unseg.core.picie import PiCIENet, state_fingerprint
from unseg.core.predict import PREDICTABLE, MethodSpec, Segmenter, method_spec, overlay, picie_encoder, prediction_head
from unseg.core.primaps.crf import CRFConfig, dense_crf
from unseg.core.primaps.prototypes import Prototypes
from unseg.datasets import TrainedModelDataset
from unseg.pipelines.evaluation.pipeline import METHODS

pytestmark = pytest.mark.integration
CLASSES = [f"c{i}" for i in range(8)]
MAPPING = [3, 1, 0, 2, 4, 5, -1, 7]  # cluster 6 matched no class


def _incoming(root: Path, rng: np.random.Generator) -> Path:
    """Two readable images, a corrupt one and a file that is not an image."""
    folder = root / "incoming"
    folder.mkdir()
    for name, size in (("a.png", (48, 40)), ("b.jpg", (33, 50))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _predict(root: Path, params: str) -> None:
    done = subprocess.run([sys.executable, "-m", "kedro", "run", "--env", "test", "--pipelines", "predict",
                           "--params", params], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def _check_outputs(root: Path, method: str) -> None:
    """The run's outputs: the newest version of the report and the label maps and overlays of that version."""
    report_file = max((root / "data/08_reporting/predict_report.json").glob("*/predict_report.json"))
    out = root / "data/07_model_output/predict" / report_file.parent.name / "predict"
    assert sorted(p.name for p in out.iterdir()) == ["a", "b"]
    for stem, size in (("a", (48, 40)), ("b", (33, 50))):
        label = np.asarray(Image.open(out / stem / "label.png"))
        assert label.shape == size
        assert set(np.unique(label)) <= {0, 1, 2, 3, 4, 5, 7, 255}  # class ids; 255 for the unmatched cluster
        assert np.asarray(Image.open(out / stem / "overlay.png")).shape == (*size, 3)
    report = json.loads(report_file.read_text())
    assert report["images"] == 2 and report["method"] == method and report["class_names"] == CLASSES
    assert report["ignored"] == ["notes.txt"] and report["resized"] == []
    assert [s["image"] for s in report["skipped"]] == ["broken.png"]
    assert "unreadable image" in report["skipped"][0]["problem"]


def test_predict_folder_with_a_corrupt_file(project_copy: Path) -> None:
    """The kmeans model of the latest local run (data/06_models, data/08_reporting/scores.json)."""
    rng = np.random.default_rng(0)
    model = {"input": "feat", "metric": "cosine", "centroids": rng.normal(size=(8, 152)).tolist(),
             "backbone": "efficientnet_lite0"}
    (project_copy / "data/06_models").mkdir(parents=True)
    (project_copy / "data/06_models/kmeans_model_mlflow.json").write_text(json.dumps(model))
    (project_copy / "data/08_reporting").mkdir(parents=True)
    scores = {"kmeans": {"method": "kmeans", "mapping": MAPPING, "class_names": CLASSES}}
    (project_copy / "data/08_reporting/scores.json").write_text(json.dumps(scores))
    earlier = {"data/07_model_output/predict/2000-01-01T00.00.00.000Z/predict/a/label.png": b"an earlier run's",
               "data/08_reporting/predict_report.json/2000-01-01T00.00.00.000Z/predict_report.json": b"{}"}
    for name, content in earlier.items():
        (project_copy / name).parent.mkdir(parents=True, exist_ok=True)
        (project_copy / name).write_bytes(content)
    _predict(project_copy, f"predict.input_dir={_incoming(project_copy, rng)}")
    _check_outputs(project_copy, "kmeans")
    assert all((project_copy / name).read_bytes() == content for name, content in earlier.items())


def test_predict_with_primaps_from_an_mlflow_run(project_copy: Path, tmp_path: Path) -> None:
    """PriMaPs-EM's student prototypes, read from the artifacts of an MLflow run by its URI (no local model files)."""
    rng = np.random.default_rng(1)
    state = {"directions": rng.normal(size=(8, 152)).tolist(), "gains": rng.uniform(1, 5, 8).tolist()}
    model = {"method": "primaps_em", "base": "frozen", "backbone": "efficientnet_lite0", "teacher": state,
             "student": state}
    scores = {"primaps_em_student": {"method": "primaps_em_student", "mapping": MAPPING, "class_names": CLASSES}}
    for name, payload in (("models/primaps_em_model_mlflow.json", model), ("reports/scores.json", scores)):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(json.dumps(payload))
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])  # the project copy's store
    run_id = client.create_run(client.create_experiment("earlier")).info.run_id
    client.log_artifact(run_id, str(tmp_path / "models/primaps_em_model_mlflow.json"), "models")
    client.log_artifact(run_id, str(tmp_path / "reports/scores.json"), "reports")
    client.set_terminated(run_id)
    folder = _incoming(project_copy, rng)
    _predict(project_copy, f"predict.input_dir={folder},predict.method=primaps_em_student,"
                           f"predict.run_id=runs:/{run_id}")
    _check_outputs(project_copy, "primaps_em_student")


def test_trained_model_dataset_errors(tmp_path: Path) -> None:
    (tmp_path / "scores.json").write_text(json.dumps({"kmeans": {"method": "kmeans", "mapping": [0]},
                                                      "picie": {"method": "picie", "skipped": "not run"},
                                                      "picie_primaps_em": {"method": "picie_primaps_em",
                                                                           "mapping": [0]}}))
    (tmp_path / "kmeans_model_mlflow.json").write_text("{not json")
    (tmp_path / "picie_primaps_em_model_mlflow.json").write_text("{}")

    def dataset(method: str) -> TrainedModelDataset:
        return TrainedModelDataset(method, models_dir=str(tmp_path), scores_file=str(tmp_path / "scores.json"),
                                   network_file=str(tmp_path / "picie_network.pt"))

    with pytest.raises(DatasetError, match="no picie_model_mlflow.json"):  # PiCIE's model: arch, size, centroids
        dataset("picie_primaps_em").load()
    (tmp_path / "picie_model_mlflow.json").write_text("{}")
    with pytest.raises(DatasetError, match="picie_primaps_em: no PiCIE network in this project"):
        dataset("picie_primaps_em").load()
    with pytest.raises(DatasetError, match="rgb_kmeans.*valid: kmeans, linear_probe"):
        dataset("rgb_kmeans").load()

    with pytest.raises(DatasetError, match="kmeans_model_mlflow.json: not valid JSON"):
        dataset("kmeans").load()
    with pytest.raises(DatasetError, match=r"linear_probe: no linear_probe_model_mlflow.json in this project"):
        dataset("linear_probe").load()
    with pytest.raises(DatasetError, match=r"picie: scores.json of .* holds no val scores for it"):
        dataset("picie").load()
    with pytest.raises(DatasetError, match="MLflow run nope"):
        TrainedModelDataset("kmeans", run_id="nope").load()


def test_prediction_head_of_primaps_prototypes() -> None:
    """The prototypes' scores g_k v_k / |v_k| . f are a linear head: the same argmax as the Prototypes module."""
    rng = np.random.default_rng(3)
    teacher = {"directions": rng.normal(size=(4, 6)).tolist(), "gains": [1.0, 2.0, 0.5, 3.0]}
    model = {"method": "primaps_em", "base": "frozen", "backbone": "b", "teacher": teacher, "student": teacher}
    head = prediction_head(model, "teacher")
    features = torch.tensor(rng.normal(size=(1, 6, 3, 5)), dtype=torch.float32)
    expected = Prototypes.from_state(teacher)(features)
    got = torch.einsum("bchw,kc->bkhw", features, torch.tensor(head["centroids"]))
    torch.testing.assert_close(got, expected)
    assert head["metric"] == "linear" and head["backbone"] == "b"
    kmeans = {"metric": "cosine", "centroids": [[1.0]]}
    assert prediction_head(kmeans) == kmeans
    with pytest.raises(ValueError, match="no 'student' prototypes"):
        prediction_head({"method": "primaps_em", "teacher": teacher}, "student")


def test_method_spec() -> None:
    assert method_spec("kmeans") == MethodSpec("kmeans", "teacher", crf=False, picie=False)
    assert method_spec("primaps_em_crf") == MethodSpec("primaps_em", "teacher", crf=True, picie=False)
    assert method_spec("primaps_em_student") == MethodSpec("primaps_em", "student", crf=False, picie=False)
    assert method_spec("picie") == MethodSpec("picie", "teacher", crf=False, picie=True)
    assert method_spec("picie_primaps_em_crf") == MethodSpec("picie_primaps_em", "teacher", crf=True, picie=True)
    assert set(PREDICTABLE) == set(METHODS) - {"rgb_kmeans"}  # every table method that can see a new image
    with pytest.raises(ValueError, match="valid: kmeans, linear_probe, picie"):
        method_spec("rgb_kmeans")


def test_picie_encoder_scale_and_weight_check() -> None:
    """The shorter side goes to the training input size, each side to a multiple of 32; a network whose weights are
    not those the centroids were fitted on is refused."""
    net = PiCIENet("efficientnet_lite0")
    config = {"arch": "efficientnet_lite0", "input_size": 64, "weights": state_fingerprint(net)}
    encoder = picie_encoder(config, net.state_dict(), [state_fingerprint(net), None])
    assert encoder.input_shape(64, 64) == (64, 64)
    assert encoder.input_shape(144, 176) == (64, 64)  # 78.2 -> 64 (nearest multiple of 32)
    assert encoder.input_shape(100, 300) == (64, 192)
    assert encoder.input_shape(300, 40) == (480, 64)  # 40 -> 64: the shorter side is scaled up too
    assert encoder(torch.rand(1, 3, 100, 300)).shape == (1, 128, 16, 48)
    with pytest.raises(ValueError, match="not the one the model was fitted on"):
        picie_encoder({**config, "weights": "0123456789abcdef"}, net.state_dict())
    with pytest.raises(ValueError, match="not the one the model was fitted on"):
        picie_encoder(config, net.state_dict(), ["0123456789abcdef"])


def test_segmenter_with_crf() -> None:
    """The CRF runs on the log-softmax of the upsampled scores of the whole image; its labels go through the mapping
    and mostly agree with the plain argmax."""
    backbone = create_backbone("efficientnet_lite0", pretrained=False)
    image = np.random.default_rng(4).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    centroids = np.random.default_rng(5).normal(size=(4, 152))
    model, mapping, lut = {"metric": "linear", "centroids": centroids.tolist()}, np.array([2, -1, 0, 1]), [2, 255, 0, 1]
    plain = Segmenter(backbone, model, mapping, torch.device("cpu"))(image)
    got = Segmenter(backbone, model, mapping, torch.device("cpu"), crf=CRFConfig())(image)
    with torch.inference_mode():
        scores = upsampled_scores(backbone(images_to_tensor(image[None], torch.device("cpu"))),
                                  torch.tensor(centroids, dtype=torch.float32), "linear", (40, 56))[0]
    expected = np.array(lut)[dense_crf(image, scores.log_softmax(0).numpy(), CRFConfig()).argmax(0)]
    np.testing.assert_array_equal(got, expected)
    assert (got == plain).mean() > 0.8


def test_overlay_blends_and_keeps_ignored_pixels() -> None:
    image = np.full((2, 2, 3), 100, np.uint8)
    label = np.array([[0, 1], [255, 0]])
    palette = np.array([[200, 0, 0], [0, 200, 0]], np.uint8)
    out = overlay(image, label, palette, 0.5)
    assert out[0, 0].tolist() == [150, 50, 50] and out[0, 1].tolist() == [50, 150, 50]
    assert out[1, 0].tolist() == [100, 100, 100]
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, label, palette, 1.5)
