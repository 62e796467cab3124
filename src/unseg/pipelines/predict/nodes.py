"""Predict nodes: segment a folder of new images with a fitted model; label maps, overlays, a report."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from unseg.core.backbones import create_backbone
from unseg.core.devices import resolve_device
from unseg.core.predict import Segmenter, method_spec, overlay, picie_encoder, prediction_head
from unseg.core.primaps.crf import CRFConfig
from unseg.core.visualise import label_palette

logger = logging.getLogger(__name__)


def _decode(load: Callable[[], Any]) -> np.ndarray:
    with load() as img:  # PIL image from pillow.ImageDataset
        return np.asarray(img.convert("RGB"))


def segment_images(images: dict[str, Callable[[], Any]], trained: dict[str, Any], features: dict[str, Any],
                   crf: dict[str, Any], dataset: dict[str, Any], predict: dict[str, Any],
                   device: str) -> tuple[dict[str, Callable[[], Image.Image]], dict[str, Any]]:
    """Lazy `<image>/label` and `<image>/overlay` PNGs for every readable image; unreadable ones are listed.

    `trained` is {"method", "run_id", "model", "scores", "picie"} (TrainedModelDataset). Methods on the frozen
    backbone run `features.*` (it must be the backbone the model was fitted on); PiCIE's and PiCIE + PriMaPs-EM's run
    the trained PiCIE network of the same run; `_crf` methods add the DenseCRF of `primaps.crf`. Every image is decoded
    once here to find the unreadable ones, then again when its outputs are saved, so memory holds one image's outputs
    at a time however large the folder.
    """
    method, scores = trained["method"], trained["scores"]
    if (predict["method"], predict["run_id"]) != (method, trained.get("run_id")):
        raise ValueError(f"predict_model holds {method} (run {trained.get('run_id')}) but the parameters say "
                         f"{predict['method']} (run {predict['run_id']}): pass predict.method and predict.run_id "
                         "with --params, where the catalog reads them")
    spec = method_spec(method)
    model = prediction_head(trained["model"], spec.role)
    if spec.picie:
        encoder = picie_encoder(trained["picie"]["model"], trained["picie"]["state"], [model.get("weights")])
    elif model.get("backbone") not in (None, features["backbone"]):
        raise ValueError(f"the model was fitted on {model['backbone']} features; features.backbone is "
                         f"{features['backbone']}")
    else:
        encoder = create_backbone(features["backbone"], features["weights"], features["pretrained"])
    if not images:
        raise ValueError("no images to segment: the input folder is empty (pass --params predict.input_dir=...)")
    segmenter = Segmenter(encoder, model, np.asarray(scores["mapping"]), resolve_device(device),
                          dataset["ignore_index"], CRFConfig(**{**crf, "enabled": True}) if spec.crf else None)
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
