"""The predict pipeline's inputs and outputs, run by SequentialRunner on the project's own catalog entries.

Earlier runs' outputs are kept (a new version per run, nothing removed) and a folder with no readable image fails
without writing anything; a missing and an empty input folder say which; large images are segmented at a bounded
working size (`predict.max_side`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, DatasetError, MemoryDataset
from kedro.runner import SequentialRunner
from PIL import Image

from unseg.core.backbones import create_backbone
from unseg.core.predict import PredictConfig, Segmenter, resize_image, working_size
from unseg.pipelines.predict import create_pipeline
from unseg.settings import CONFIG_LOADER_ARGS

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CLASSES = [f"c{i}" for i in range(8)]
MAPPING = [3, 1, 0, 2, 4, 5, -1, 7]
OUTPUTS = Path("data/07_model_output/predict")
REPORTS = Path("data/08_reporting/predict_report.json")


def _config(input_dir: Path) -> OmegaConfigLoader:
    return OmegaConfigLoader(str(PROJECT_ROOT / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": "test"},
                             runtime_params={"predict": {"input_dir": str(input_dir)}})


def _trained() -> dict[str, Any]:
    """A kmeans model on the frozen backbone (random centroids) and its val mapping, as TrainedModelDataset gives."""
    centroids = np.random.default_rng(0).normal(size=(8, 152)).tolist()
    return {"method": "kmeans", "run_id": None, "picie": None, "scores": {"mapping": MAPPING, "class_names": CLASSES},
            "model": {"metric": "cosine", "centroids": centroids, "backbone": "efficientnet_lite0"}}


def _predict(input_dir: Path, version: str, **predict: Any) -> None:
    """The predict pipeline in this folder (cwd): the catalog's image, output and report entries, as `kedro run`
    with --params predict.input_dir=input_dir makes them, saving `version`."""
    config = _config(input_dir)
    params = config["parameters"]
    params["predict"].update(input_dir=str(input_dir), **predict)
    entries = {name: config["catalog"][name] for name in ("predict_images", "predict_outputs", "predict_report")}
    catalog = DataCatalog.from_config(entries, save_version=version)
    catalog["predict_model"] = MemoryDataset(_trained())
    catalog["predict_metrics"] = MemoryDataset()
    for key in ("features", "dataset", "predict", "device"):
        catalog[f"params:{key}"] = MemoryDataset(params[key])
    catalog["params:primaps.crf"] = MemoryDataset(params["primaps"]["crf"])
    SequentialRunner().run(create_pipeline(), catalog)


def _save(folder: Path, name: str, size: tuple[int, int], seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / name)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.integration
def test_runs_keep_earlier_outputs_and_an_unreadable_folder_fails_writing_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _save(tmp_path / "first", "a.png", (24, 32))
    _predict(tmp_path / "first", "2024-01-01T00.00.00.000Z")
    before = _tree(tmp_path / "data")
    assert sorted(before) == ["07_model_output/predict/2024-01-01T00.00.00.000Z/predict/a/label.png",
                              "07_model_output/predict/2024-01-01T00.00.00.000Z/predict/a/overlay.png",
                              "08_reporting/predict_report.json/2024-01-01T00.00.00.000Z/predict_report.json"]

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"\x89PNG not really")
    (bad / "y.jpg").write_bytes(b"")
    with pytest.raises(Exception, match=r"none of the 2 image files of .*bad could be read") as caught:
        _predict(bad, "2024-01-02T00.00.00.000Z")
    message = str(caught.value)
    assert "x.png: unreadable image" in message and "y.jpg: unreadable image" in message
    assert _tree(tmp_path / "data") == before  # nothing written, nothing removed

    _save(tmp_path / "second", "b.png", (20, 16))
    _predict(tmp_path / "second", "2024-01-03T00.00.00.000Z")
    after = _tree(tmp_path / "data")
    assert {k: after[k] for k in before} == before  # the first run's files, byte for byte
    assert "07_model_output/predict/2024-01-03T00.00.00.000Z/predict/b/label.png" in after
    report = json.loads((REPORTS / "2024-01-03T00.00.00.000Z/predict_report.json").read_text())
    assert (report["input_dir"], report["images"], report["skipped"]) == (str(tmp_path / "second"), 1, [])


def test_missing_and_empty_input_folders_say_which(tmp_path: Path) -> None:
    def load(folder: Path) -> object:
        entry = _config(folder)["catalog"]["predict_images"]
        return DataCatalog.from_config({"predict_images": entry}).load("predict_images")

    with pytest.raises(DatasetError, match=rf"image folder {tmp_path / 'nope'} does not exist"):
        load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=rf"{tmp_path / 'empty'} holds no image files \(\.jpg/\.jpeg/\.png, any "
                                           r"case\); it is empty"):
        load(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other/notes.txt").write_text("no image")
    (tmp_path / "other/scan.gif").write_bytes(b"GIF89a")
    with pytest.raises(DatasetError, match=r"other holds no image files .* it holds 2 other files: notes.txt, scan.g"):
        load(tmp_path / "other")
    _save(tmp_path / "other/sub", "C.JPG", (8, 8))
    folder = load(tmp_path / "other")
    assert (folder["root"], list(folder["images"]), folder["ignored"]) == (  # type: ignore[index]
        str(tmp_path / "other"), ["sub/C.JPG"], ["notes.txt", "scan.gif"])


def test_working_size_and_max_side_checks() -> None:
    assert working_size(4000, 6000, 512) == (341, 512)
    assert working_size(6000, 4000, 512) == (512, 341)
    assert working_size(40, 56, 24) == (17, 24)
    assert working_size(40, 56, 56) == (40, 56) == working_size(40, 56, None)
    assert PredictConfig("kmeans", max_side=None).max_side is None
    for bad in (0, -1, 1.5, True, "512"):
        with pytest.raises(ValueError, match="predict.max_side must be a positive integer .* or null"):
            PredictConfig("kmeans", max_side=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="valid: kmeans, linear_probe"):
        PredictConfig("rgb_kmeans")


@pytest.mark.integration
def test_large_images_are_segmented_at_max_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """max_side=24: a 40x56 PNG and a 33x50 JPEG are resized (longer side 24) and written at that size, with the
    labels of the resized image; a 16x20 image fits and is untouched."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "big"
    _save(folder, "wide.png", (40, 56), seed=1)
    _save(folder, "photo.jpg", (33, 50), seed=2)
    _save(folder, "small.png", (16, 20), seed=3)
    with caplog.at_level(logging.INFO, logger="unseg.pipelines.predict.nodes"):
        _predict(folder, "2024-01-01T00.00.00.000Z", max_side=24)
    out = OUTPUTS / "2024-01-01T00.00.00.000Z/predict"
    sizes = {name: np.asarray(Image.open(out / name / "label.png")).shape for name in ("wide", "photo", "small")}
    assert sizes == {"wide": (17, 24), "photo": (16, 24), "small": (16, 20)}
    assert np.asarray(Image.open(out / "wide/overlay.png")).shape == (17, 24, 3)
    report = json.loads((REPORTS / "2024-01-01T00.00.00.000Z/predict_report.json").read_text())
    assert report["max_side"] == 24
    assert report["resized"] == [{"image": "photo.jpg", "size": [33, 50], "working_size": [16, 24]},
                                 {"image": "wide.png", "size": [40, 56], "working_size": [17, 24]}]
    assert "wide.png: 56x40 pixels, resized to 24x17 (predict.max_side=24)" in caplog.text

    # the label map is that of the resized image, through the mapping
    segmenter = Segmenter(create_backbone("efficientnet_lite0"), _trained()["model"], np.array(MAPPING),
                          torch.device("cpu"))
    expected = segmenter(resize_image(np.asarray(Image.open(folder / "wide.png")), (17, 24)))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "wide/label.png")), expected)


@pytest.mark.integration
def test_images_are_decoded_as_ingestion_decodes_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EXIF orientation applied (a photo tagged "rotate 90" is segmented upright, at its shown size, also when it is
    resized) and 16-bit grey scaled to 8 bits (not saturated to white), as in ingestion."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "photos"
    folder.mkdir()
    pixels = np.random.default_rng(4).integers(0, 255, (16, 24, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    Image.fromarray(pixels).save(folder / "turned.png", exif=exif)
    Image.fromarray(pixels).resize((48, 32)).save(folder / "turned_big.jpg", exif=exif, quality=95)
    grey = np.random.default_rng(5).integers(0, 65536, (16, 20), dtype=np.uint16)
    Image.fromarray(grey).save(folder / "deep.png")
    _predict(folder, "2024-01-02T00.00.00.000Z", max_side=24)
    out = OUTPUTS / "2024-01-02T00.00.00.000Z/predict"
    segmenter = Segmenter(create_backbone("efficientnet_lite0"), _trained()["model"], np.array(MAPPING),
                          torch.device("cpu"))
    upright = np.ascontiguousarray(np.rot90(pixels, k=-1))  # (24, 16, 3)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "turned/label.png")), segmenter(upright))
    assert np.asarray(Image.open(out / "turned_big/label.png")).shape == (24, 16)
    expected = segmenter(np.repeat((grey >> 8).astype(np.uint8)[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "deep/label.png")), expected)
