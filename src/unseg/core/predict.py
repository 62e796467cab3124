"""Prediction on new images: a frozen backbone plus a scoring model (k-means centroids, the linear probe, or any
linear prototype head) and the cluster -> class mapping found on val, to label maps and overlays.

Images are scored at their own resolution (the backbone resizes sides down to its input multiple); the scores are
upsampled bilinearly to the image size before the argmax, as in evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unseg.core.backbones import Backbone
from unseg.core.features import images_to_tensor
from unseg.core.kmeans import predict_labels
from unseg.core.primaps.prototypes import Prototypes

logger = logging.getLogger(__name__)


def prediction_head(model: Mapping[str, Any], role: str = "teacher") -> dict[str, Any]:
    """The scoring head of a fitted model: {"metric", "centroids" (K, D), optional "bias", "backbone"}.

    k-means and probe models are heads already; a PriMaPs-EM model's prototypes (its `role`, teacher or student)
    score the raw features with the weight g_k v_k / |v_k|, a linear head. Prediction runs the frozen backbone
    without flip averaging or CRF.

    Raises:
        ValueError: a model on PiCIE's learned features (the frozen backbone cannot feed it), or no such role.
    """
    if "centroids" in model:
        return dict(model)
    if model.get("base") != "frozen":
        raise ValueError(f"{model.get('method')}: prototypes on {model.get('base')} features; prediction on new "
                         "images runs the frozen backbone only")
    if role not in model:
        raise ValueError(f"{model.get('method')}: the model has no {role!r} prototypes")
    weight = Prototypes.from_state(model[role]).weight().detach()
    return {"metric": "linear", "centroids": weight.tolist(), "backbone": model.get("backbone")}


@dataclass
class Segmenter:
    """Image -> class ids, from a frozen backbone and a centroid/linear model.

    Args:
        backbone: the frozen backbone the model was fitted on.
        model: {"metric", "centroids" (K, D), optional "bias" (K,)}, as the evaluation pipeline saves them.
        mapping: cluster -> class id (-1: unmatched), from the method's val scores.
        ignore_index: the label written where a cluster matched no class.
    """

    backbone: Backbone
    model: Mapping[str, Any]
    mapping: np.ndarray
    device: torch.device
    ignore_index: int = 255

    def __post_init__(self) -> None:
        self.backbone.to(self.device)
        self._centroids = torch.tensor(self.model["centroids"], dtype=torch.float32, device=self.device)
        bias = self.model.get("bias")
        self._bias = None if bias is None else torch.tensor(bias, dtype=torch.float32, device=self.device)
        if self._centroids.shape[1] != self.backbone.cfg.dim:
            raise ValueError(f"the model scores {self._centroids.shape[1]}-d features, backbone "
                             f"{self.backbone.cfg.name} gives {self.backbone.cfg.dim}-d")
        if len(self.mapping) != len(self._centroids):
            raise ValueError(f"mapping has {len(self.mapping)} entries for {len(self._centroids)} clusters")
        self._lut = np.where(np.asarray(self.mapping) < 0, self.ignore_index, self.mapping).astype(np.int64)

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) -> class ids (H, W) (uint8 when they fit, else int32)."""
        height, width = image.shape[:2]
        feats = self.backbone(images_to_tensor(image[None], self.device))
        clusters = predict_labels(feats, self._centroids, self.model["metric"], (height, width), self._bias)
        labels = self._lut[clusters[0].cpu().numpy()]
        return labels.astype(np.uint8 if labels.max(initial=0) <= 255 else np.int32)


def overlay(image: np.ndarray, label: np.ndarray, palette: np.ndarray, alpha: float,
            ignore_index: int = 255) -> np.ndarray:
    """The label map's colours blended over the image: uint8 (H, W, 3); ignored pixels keep the image."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay alpha must be in [0, 1], got {alpha}")
    valid = (label != ignore_index) & (label < len(palette))
    colours = palette[np.where(valid, label, 0)].astype(np.float32)
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * colours
    return np.where(valid[..., None], mixed, image).round().astype(np.uint8)
