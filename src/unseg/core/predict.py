"""Prediction on new images: an encoder (the frozen backbone, or PiCIE's trained network) plus a scoring model
(k-means centroids, the linear probe, or any linear prototype head), optionally a DenseCRF, and the cluster -> class
mapping found on val, to label maps and overlays.

Images whose longer side exceeds `predict.max_side` are first resized (bilinear, antialiased) so that it is
`max_side` (`working_size`, `resize_image`): every step after that, and the label map and overlay written, are at that
working size, so memory and time are bounded whatever the photo. Within it the frozen backbone scores images at their
own resolution (it resizes sides down to its input multiple); PiCIE's network sees them at the scale it was trained
and evaluated at (`PiCIEEncoder`). The scores are upsampled bilinearly to the working size before the argmax (or the
CRF), as in evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from unseg.core.features import images_to_tensor
from unseg.core.kmeans import upsampled_scores
from unseg.core.picie.inference import state_fingerprint
from unseg.core.picie.network import PiCIENet
from unseg.core.primaps.crf import CRFConfig, dense_crf
from unseg.core.primaps.prototypes import Prototypes

logger = logging.getLogger(__name__)

# the comparison table's methods that can segment new images (rgb_kmeans, the floor, cannot: it clusters colours)
PREDICTABLE = ("kmeans", "linear_probe", "picie", "primaps_em", "primaps_em_crf", "primaps_em_student",
               "picie_primaps_em", "picie_primaps_em_crf", "picie_primaps_em_student")


@dataclass(frozen=True)
class MethodSpec:
    """How a table method predicts.

    Attributes:
        model: the method whose fitted model it uses (`primaps_em_crf` and `primaps_em_student` use `primaps_em`'s).
        role: the prototypes of a PriMaPs-EM model it scores with: teacher, or student.
        crf: DenseCRF over the log-softmax of the upsampled scores.
        picie: the features come from PiCIE's trained network, not the frozen backbone.
    """

    model: str
    role: str
    crf: bool
    picie: bool


def method_spec(method: str) -> MethodSpec:
    """Raises ValueError for a method that cannot predict, listing those that can."""
    if method not in PREDICTABLE:
        raise ValueError(f"predict.method={method!r}; valid: {', '.join(PREDICTABLE)}")
    student, crf = method.endswith("_student"), method.endswith("_crf")
    return MethodSpec(method.removesuffix("_student").removesuffix("_crf"), "student" if student else "teacher", crf,
                      method.startswith("picie"))


@dataclass(frozen=True)
class PredictConfig:
    """The `predict` parameters block.

    Attributes:
        method: the comparison table's method whose fitted model segments (one of PREDICTABLE).
        run_id: the MLflow run of the model; None: the project's latest local run.
        overlay_alpha: weight of the label colours over the image in the overlay, in [0, 1].
        max_side: the longer side, in pixels, that a larger image is resized to before segmentation; its label map
            and overlay are written at that working size. None: full resolution (memory and time grow with it).
        input_dir: the folder of images, where given with --params (the catalog reads it; kept for the record).

    Raises:
        ValueError: an unknown method, an alpha outside [0, 1], a max_side that is not a positive integer or None.
    """

    method: str
    run_id: str | None = None
    overlay_alpha: float = 0.5
    max_side: int | None = 512
    input_dir: str | None = None

    def __post_init__(self) -> None:
        method_spec(self.method)
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise ValueError(f"predict.overlay_alpha must be in [0, 1], got {self.overlay_alpha}")
        if self.max_side is not None and (isinstance(self.max_side, bool) or not isinstance(self.max_side, int)
                                          or self.max_side < 1):
            raise ValueError(f"predict.max_side must be a positive integer (pixels of the longer side) or null (full "
                             f"resolution), got {self.max_side!r}")


def working_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """(height, width) scaled so that the longer side is `max_side`; unchanged where it fits or max_side is None."""
    if max_side is None or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (size[0], size[1], 3), bilinear (antialiased when shrinking, as PIL does)."""
    if tuple(image.shape[:2]) == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def prediction_head(model: Mapping[str, Any], role: str = "teacher") -> dict[str, Any]:
    """The scoring head of a fitted model: {"metric", "centroids" (K, D), optional "bias", "backbone", "weights"}.

    k-means and probe models are heads already; a PriMaPs-EM model's prototypes (its `role`, teacher or student)
    score the raw features with the weight g_k v_k / |v_k|, a linear head. Prediction runs the encoder once, without
    flip averaging.

    Raises:
        ValueError: no such role.
    """
    if "centroids" in model:
        return dict(model)
    if role not in model:
        raise ValueError(f"{model.get('method')}: the model has no {role!r} prototypes")
    weight = Prototypes.from_state(model[role]).weight().detach()
    return {"metric": "linear", "centroids": weight.tolist(), "backbone": model.get("backbone"),
            "weights": model.get("weights")}


class PiCIEEncoder(torch.nn.Module):
    """PiCIE's network on an image at the scale of its training and evaluation, features (B, dim, H' / 4, W' / 4).

    Evaluation resizes the prepared crop (a centre crop of the image resized to shorter side = crop side) to the
    network's input size; here the image's shorter side goes to the input size, then each side to the nearest
    multiple of 32 (the network's deepest stride). On a prepared crop both agree exactly.
    """

    multiple = 32

    def __init__(self, net: PiCIENet, input_size: int) -> None:
        super().__init__()
        if input_size < self.multiple:
            raise ValueError(f"PiCIE input size {input_size} is below {self.multiple}")
        self.net, self.input_size, self.dim = net.eval(), int(input_size), net.dim

    def input_shape(self, height: int, width: int) -> tuple[int, int]:
        scale = self.input_size / min(height, width)
        return tuple(max(self.multiple, round(side * scale / self.multiple) * self.multiple)  # type: ignore[return-value]
                     for side in (height, width))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) RGB in [0, 1]."""
        size = self.input_shape(*images.shape[-2:])
        if size != tuple(images.shape[-2:]):
            images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
        return self.net(images)


def picie_encoder(config: Mapping[str, Any], state: Mapping[str, torch.Tensor],
                  expected_weights: Iterable[str | None] = ()) -> PiCIEEncoder:
    """PiCIE's network from its state dict, checked against the weight fingerprints the models were fitted on.

    Args:
        config: PiCIE's k-means model ({"arch", "input_size", "weights", ...}, the picie pipeline's `model_mlflow`).
        state: the network's state dict.
        expected_weights: further fingerprints that must match (None: not recorded, not checked).

    Raises:
        ValueError: the network is not the one the models were fitted on.
    """
    net = PiCIENet(config["arch"])
    net.load_state_dict(state)
    found = state_fingerprint(net)
    for expected in (config.get("weights"), *expected_weights):
        if expected is not None and expected != found:
            raise ValueError(f"PiCIE's network (weights {found}) is not the one the model was fitted on (weights "
                             f"{expected}): the network and the models must come from the same run")
    return PiCIEEncoder(net, config["input_size"])


@dataclass
class Segmenter:
    """Image -> class ids, from an encoder and a centroid/linear model.

    Args:
        encoder: a frozen Backbone or a PiCIEEncoder: (B, 3, H, W) in [0, 1] -> (B, D, h, w); `dim` = D.
        model: {"metric", "centroids" (K, D), optional "bias" (K,)}, as the evaluation pipeline saves them.
        mapping: cluster -> class id (-1: unmatched), from the method's val scores.
        crf: None: argmax of the upsampled scores; else the DenseCRF's marginals over their log-softmax, argmax.
        ignore_index: the label written where a cluster matched no class.
    """

    encoder: torch.nn.Module
    model: Mapping[str, Any]
    mapping: np.ndarray
    device: torch.device
    ignore_index: int = 255
    crf: CRFConfig | None = None

    def __post_init__(self) -> None:
        self.encoder.to(self.device)
        self._centroids = torch.tensor(self.model["centroids"], dtype=torch.float32, device=self.device)
        bias = self.model.get("bias")
        self._bias = None if bias is None else torch.tensor(bias, dtype=torch.float32, device=self.device)
        if self._centroids.shape[1] != self.encoder.dim:
            raise ValueError(f"the model scores {self._centroids.shape[1]}-d features, the encoder gives "
                             f"{self.encoder.dim}-d")
        if len(self.mapping) != len(self._centroids):
            raise ValueError(f"mapping has {len(self.mapping)} entries for {len(self._centroids)} clusters")
        self._lut = np.where(np.asarray(self.mapping) < 0, self.ignore_index, self.mapping).astype(np.int64)

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) -> class ids (H, W) (uint8 when they fit, else int32)."""
        height, width = image.shape[:2]
        feats = self.encoder(images_to_tensor(image[None], self.device))
        scores = upsampled_scores(feats, self._centroids, self.model["metric"], (height, width), self._bias)[0]
        if self.crf is None or not self.crf.enabled:
            clusters = scores.argmax(0).cpu().numpy()
        else:
            clusters = dense_crf(image, scores.log_softmax(0).cpu().numpy(), self.crf).argmax(0)
        labels = self._lut[clusters]
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
