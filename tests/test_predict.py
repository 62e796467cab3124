"""The predict pipeline on a small folder with one corrupt file: every readable image segmented, the bad one listed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unseg.core.backbones import create_backbone
from unseg.core.predict import Segmenter, overlay

pytestmark = pytest.mark.integration
VERSION = "2026-01-01T00.00.00.000Z"


def _write_versioned_json(root: Path, name: str, payload: dict[str, object]) -> None:
    path = root / "data/06_models" if name.endswith("_model.json") else root / "data/07_model_output"
    target = path / name / VERSION / name
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps(payload))


def test_predict_folder_with_a_corrupt_file(project_copy: Path) -> None:
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(8, 152)).tolist()
    mapping = [3, 1, 0, 2, 4, 5, -1, 7]  # cluster 6 matched no class
    _write_versioned_json(project_copy, "kmeans_model.json", {"input": "feat", "metric": "cosine",
                                                                "centroids": centroids,
                                                                "backbone": "efficientnet_lite0"})
    _write_versioned_json(project_copy, "kmeans_scores.json", {"method": "kmeans", "mapping": mapping,
                                                                 "class_names": [f"c{i}" for i in range(8)]})
    folder = project_copy / "incoming"
    folder.mkdir()
    for name, size in (("a.png", (48, 40)), ("b.jpg", (33, 50))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG not really")

    subprocess.run([sys.executable, "-m", "kedro", "run", "--env", "test", "--pipelines", "predict", "--params",
                    f"predict.input_dir={folder}"], cwd=project_copy, check=True, capture_output=True)

    out = project_copy / "data/07_model_output/predict"
    assert sorted(p.name for p in out.iterdir()) == ["a", "b"]
    for stem, size in (("a", (48, 40)), ("b", (33, 50))):
        label = np.asarray(Image.open(out / stem / "label.png"))
        assert label.shape == size
        assert set(np.unique(label)) <= {0, 1, 2, 3, 4, 5, 7, 255}  # class ids; 255 for the unmatched cluster
        assert np.asarray(Image.open(out / stem / "overlay.png")).shape == (*size, 3)
    report = json.loads((project_copy / "data/08_reporting/predict_report.json").read_text())
    assert report["images"] == 2
    assert [s["image"] for s in report["skipped"]] == ["broken.png"]
    assert "unreadable image" in report["skipped"][0]["problem"]


def test_segmenter_maps_clusters_to_classes() -> None:
    backbone = create_backbone("efficientnet_lite0", pretrained=False)
    image = np.random.default_rng(1).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    centroids = np.random.default_rng(2).normal(size=(4, 152))
    direct = Segmenter(backbone, {"metric": "cosine", "centroids": centroids.tolist()}, np.arange(4),
                       torch.device("cpu"))(image)
    mapped = Segmenter(backbone, {"metric": "cosine", "centroids": centroids.tolist()}, np.array([2, -1, 0, 1]),
                       torch.device("cpu"))(image)
    assert direct.shape == (40, 56)
    np.testing.assert_array_equal(mapped, np.array([2, 255, 0, 1])[direct])
    with pytest.raises(ValueError, match="152-d"):
        Segmenter(backbone, {"metric": "cosine", "centroids": [[0.0] * 10]}, np.arange(1), torch.device("cpu"))


def test_overlay_blends_and_keeps_ignored_pixels() -> None:
    image = np.full((2, 2, 3), 100, np.uint8)
    label = np.array([[0, 1], [255, 0]])
    palette = np.array([[200, 0, 0], [0, 200, 0]], np.uint8)
    out = overlay(image, label, palette, 0.5)
    assert out[0, 0].tolist() == [150, 50, 50] and out[0, 1].tolist() == [50, 150, 50]
    assert out[1, 0].tolist() == [100, 100, 100]
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, label, palette, 1.5)
