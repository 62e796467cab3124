"""Predict nodes: segment a folder of new images with a fitted model; label maps, overlays, a report."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from unseg.core.backbones import create_backbone
from unseg.core.devices import resolve_device
from unseg.core.predict import Segmenter, overlay, prediction_head
from unseg.core.visualise import label_palette

logger = logging.getLogger(__name__)

# methods whose fitted model is a head (centroids, linear weights, prototypes) on the frozen backbone features
PREDICTABLE = ("kmeans", "linear_probe", "primaps_em", "primaps_em_student")


def _decode(load: Callable[[], Any]) -> np.ndarray:
    with load() as img:  # PIL image from pillow.ImageDataset
        return np.asarray(img.convert("RGB"))


def segment_images(images: dict[str, Callable[[], Any]], trained: dict[str, Any], features: dict[str, Any],
                   dataset: dict[str, Any], predict: dict[str, Any],
                   device: str) -> tuple[dict[str, Callable[[], Image.Image]], dict[str, Any]]:
    """Lazy `<image>/label` and `<image>/overlay` PNGs for every readable image; unreadable ones are listed.

    `trained` is {"method", "model", "scores"} (TrainedModelDataset). Every image is decoded once here to find the
    unreadable ones, then again when its outputs are saved, so memory holds one image's outputs at a time however
    large the folder.
    """
    method, scores = trained["method"], trained["scores"]
    if (predict["method"], predict["run_id"]) != (method, trained.get("run_id")):
        raise ValueError(f"predict_model holds {method} (run {trained.get('run_id')}) but the parameters say "
                         f"{predict['method']} (run {predict['run_id']}): pass predict.method and predict.run_id "
                         "with --params, where the catalog reads them")
    if method not in PREDICTABLE:
        raise ValueError(f"predict.method={method}: predict segments with {', '.join(PREDICTABLE)} (heads on the "
                         "frozen backbone)")
    model = prediction_head(trained["model"], "student" if method.endswith("_student") else "teacher")
    if model.get("backbone") not in (None, features["backbone"]):
        raise ValueError(f"the model was fitted on {model['backbone']} features; features.backbone is "
                         f"{features['backbone']}")
    if not images:
        raise ValueError("no images to segment: the input folder is empty (pass --params predict.input_dir=...)")
    segmenter = Segmenter(create_backbone(features["backbone"], features["weights"], features["pretrained"]),
                          model, np.asarray(scores["mapping"]), resolve_device(device), dataset["ignore_index"])
    palette = label_palette(dataset["num_classes"])
    skipped, readable = [], []
    for name, load in sorted(images.items()):
        try:
            _decode(load)
            readable.append(name)
        except Exception as err:  # noqa: BLE001 - any decoder error: listed, the other images go on
            logger.warning("skipping %s: unreadable image (%s: %s)", name, err.__class__.__name__, err)
            skipped.append({"image": name, "problem": f"unreadable image ({err.__class__.__name__}: {err})"})

    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def outputs(name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in cache:  # label then overlay of one image are saved back to back (sorted keys)
            cache.clear()
            image = _decode(images[name])
            cache[name] = image, segmenter(image)
        return cache[name]

    def label_png(name: str) -> Callable[[], Image.Image]:
        return lambda: Image.fromarray(outputs(name)[1])

    def overlay_png(name: str) -> Callable[[], Image.Image]:
        return lambda: Image.fromarray(overlay(*outputs(name), palette, predict["overlay_alpha"],
                                               dataset["ignore_index"]))

    stems = [name.rsplit(".", 1)[0] for name in readable]
    folders = stems if len(set(stems)) == len(stems) else readable  # a.jpg and a.png: keep the suffixes
    files = {f"{folder}/label": label_png(name) for folder, name in zip(folders, readable, strict=True)}
    files |= {f"{folder}/overlay": overlay_png(name) for folder, name in zip(folders, readable, strict=True)}
    report = {"images": len(readable), "skipped": skipped, "class_names": scores["class_names"], "method": method,
              "run_id": predict.get("run_id")}
    return files, report


def predict_metrics(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {"predict/images": {"value": float(report["images"]), "step": 0},
            "predict/skipped": {"value": float(len(report["skipped"])), "step": 0}}
