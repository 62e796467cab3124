"""Predict nodes: segment a folder of new images with a fitted model; label maps, overlays, a report."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps

from unseg.core.backbones import create_backbone
from unseg.core.data.sources import image_to_rgb
from unseg.core.devices import resolve_device
from unseg.core.predict import (
    PredictConfig,
    Segmenter,
    method_spec,
    overlay,
    picie_encoder,
    prediction_head,
    resize_image,
    working_size,
)
from unseg.core.primaps.crf import CRFConfig
from unseg.core.visualise import label_palette

logger = logging.getLogger(__name__)


def _decode(name: str, load: Callable[[], Any], max_side: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """The image as ingestion decodes it (EXIF orientation applied, 16-bit scaled, alpha dropped: see
    `unseg.core.data.sources.image_to_rgb`) at its working size (longer side at most max_side), uint8 (h, w, 3), and
    its own size (H, W) as shown."""
    with load() as img:  # a lazily opened PIL image (ImageFolderDataset)
        turned = img.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)  # shown with height and width swapped
        stored = img.height, img.width
        size = stored[::-1] if turned else stored
        work = working_size(*size, max_side)
        if work != size:
            draft = work[::-1] if turned else work
            img.draft(None, (draft[1], draft[0]))  # JPEG: decode at the smallest DCT scale that still covers it
        shown = ImageOps.exif_transpose(img)
        return resize_image(image_to_rgb(shown, name), work), size


def segment_images(folder: dict[str, Any], trained: dict[str, Any], features: dict[str, Any], crf: dict[str, Any],
                   dataset: dict[str, Any], predict: dict[str, Any],
                   device: str) -> tuple[dict[str, Callable[[], Image.Image]], dict[str, Any]]:
    """Lazy `<image>/label` and `<image>/overlay` PNGs for every readable image; unreadable ones are listed.

    `folder` is {"root", "images": {name: loader}, "ignored"} (ImageFolderDataset). `trained` is {"method",
    "run_id", "model", "scores", "picie"} (TrainedModelDataset). Methods on the frozen backbone run `features.*` (it
    must be the backbone the model was fitted on); PiCIE's and PiCIE + PriMaPs-EM's run the trained PiCIE network of
    the same run; `_crf` methods add the DenseCRF of `primaps.crf`. An image whose longer side exceeds
    `predict.max_side` is resized to it first (logged, listed in the report's "resized"); its label map and overlay
    are written at that working size. Every image is decoded once here to find the unreadable ones, then again when
    its outputs are saved, so memory holds one image's outputs at a time however large the folder.

    Raises:
        ValueError: the model is not the one the parameters name, or no image of the folder could be read (nothing
            is returned, so nothing is saved and earlier predictions stay as they are).
    """
    config = PredictConfig(**predict)
    method, scores, root, images = trained["method"], trained["scores"], folder["root"], folder["images"]
    if (config.method, config.run_id) != (method, trained.get("run_id")):
        raise ValueError(f"predict_model holds {method} (run {trained.get('run_id')}) but the parameters say "
                         f"{config.method} (run {config.run_id}): pass predict.method and predict.run_id "
                         "with --params, where the catalog reads them")
    if not images:
        raise ValueError(f"no images to segment in {root} (pass --params predict.input_dir=...)")
    skipped, readable, resized = [], [], []
    for name, load in sorted(images.items()):
        try:
            image, size = _decode(name, load, config.max_side)
            readable.append(name)
        except Exception as err:  # noqa: BLE001 - any decoder error: listed, the other images go on
            logger.warning("skipping %s: unreadable image (%s: %s)", name, err.__class__.__name__, err)
            skipped.append({"image": name, "problem": f"unreadable image ({err.__class__.__name__}: {err})"})
            continue
        if image.shape[:2] != size:
            logger.info("%s: %dx%d pixels, resized to %dx%d (predict.max_side=%d) and segmented at that size, the "
                        "size of its label.png and overlay.png", name, size[1], size[0], image.shape[1],
                        image.shape[0], config.max_side)
            resized.append({"image": name, "size": list(size), "working_size": list(image.shape[:2])})
    if not readable:
        raise ValueError(f"nothing segmented: none of the {len(images)} image files of {root} could be read; no "
                         "output written, earlier predictions kept. "
                         + "; ".join(f"{s['image']}: {s['problem']}" for s in skipped))

    spec = method_spec(method)
    model = prediction_head(trained["model"], spec.role)
    if spec.picie:
        encoder = picie_encoder(trained["picie"]["model"], trained["picie"]["state"], [model.get("weights")])
    elif model.get("backbone") not in (None, features["backbone"]):
        raise ValueError(f"the model was fitted on {model['backbone']} features; features.backbone is "
                         f"{features['backbone']}")
    else:
        encoder = create_backbone(features["backbone"], features["weights"], features["pretrained"])
    segmenter = Segmenter(encoder, model, np.asarray(scores["mapping"]), resolve_device(device),
                          dataset["ignore_index"], CRFConfig(**{**crf, "enabled": True}) if spec.crf else None)
    palette = label_palette(dataset["num_classes"])
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def outputs(name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in cache:  # label then overlay of one image are saved back to back (sorted keys)
            cache.clear()
            image = _decode(name, images[name], config.max_side)[0]
            cache[name] = image, segmenter(image)
        return cache[name]

    def label_png(name: str) -> Callable[[], Image.Image]:
        return lambda: Image.fromarray(outputs(name)[1])

    def overlay_png(name: str) -> Callable[[], Image.Image]:
        return lambda: Image.fromarray(overlay(*outputs(name), palette, config.overlay_alpha, dataset["ignore_index"]))

    stems = [name.rsplit(".", 1)[0] for name in readable]
    folders = stems if len(set(stems)) == len(stems) else readable  # a.jpg and a.png: keep the suffixes
    files = {f"{out}/label": label_png(name) for out, name in zip(folders, readable, strict=True)}
    files |= {f"{out}/overlay": overlay_png(name) for out, name in zip(folders, readable, strict=True)}
    report = {"input_dir": root, "images": len(readable), "skipped": skipped, "ignored": folder.get("ignored", []),
              "max_side": config.max_side, "resized": resized, "class_names": scores["class_names"],
              "method": method, "run_id": config.run_id}
    return files, report


def predict_metrics(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {"predict/images": {"value": float(report["images"]), "step": 0},
            "predict/skipped": {"value": float(len(report["skipped"])), "step": 0}}
