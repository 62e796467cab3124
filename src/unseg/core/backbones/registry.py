"""Backbone registry: a name maps to a builder and a cfg of the facts every caller needs.

Every backbone is a `Backbone`: it takes RGB images in [0, 1] of shape (B, 3, H, W), normalises them itself with its
own mean/std, and returns dense features (B, C, H / stride, W / stride). Callers never need to know which family a
backbone comes from (the timm `forward_features` idea, [0]).

Image sides that are not a multiple of `cfg.input_multiple` (the patch size of a ViT) are resized (bilinear,
antialiased) down to the nearest multiple before the forward pass, never below one multiple, so the output grid spans
the whole image; see docs/backbones.md.

[0] https://github.com/huggingface/pytorch-image-models/blob/main/timm/models/_registry.py
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

# ImageNet statistics: the input normalisation of DINO, DINOv2, DINOv3 (their timm pretrained_cfg) and torchvision
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneCfg:
    """Facts about one registry entry.

    Attributes:
        name: registry name.
        dim: channels C of the dense output.
        stride: input pixels per output cell.
        mean / std: per-channel input normalisation, applied inside the backbone.
        input_multiple: image sides the network takes: multiples of this (the patch size of a ViT, else a multiple
            of the stride); other sizes are resized to the nearest multiple below (see `Backbone.forward`).
        weights_source: where `weights=None` loads from, in words (for errors and the run's params).
        arch: the upstream model the entry builds, e.g. "timm vit_small_patch8_224.dino".
        input_size: the square evaluation crop the papers use with this backbone (320; 322 for patch 14).
    """

    name: str
    dim: int
    stride: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_multiple: int
    weights_source: str
    arch: str = ""
    input_size: int = 320

    def input_shape(self, height: int, width: int) -> tuple[int, int]:
        """The size an image of `height` x `width` is resized to: each side down to a multiple of input_multiple."""
        m = self.input_multiple
        return max(m, height // m * m), max(m, width // m * m)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the dense output for an input image of `height` x `width`."""
        h, w = self.input_shape(height, width)
        return h // self.stride, w // self.stride


class Backbone(nn.Module):
    """A frozen dense feature extractor: (B, 3, H, W) in [0, 1] -> (B, C, H / stride, W / stride)."""

    def __init__(self, cfg: BackboneCfg, body: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.body = body
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)
        self._resized_from: set[tuple[int, int]] = set()  # sizes already warned about

    @property
    def dim(self) -> int:
        """Channels of the dense output."""
        return self.cfg.dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Dense features of a batch of images.

        Sides that are not multiples of cfg.input_multiple are resized (bilinear, antialiased) down to the nearest
        multiple (at least one multiple), with a warning once per size: resizing keeps the whole image under the
        feature grid, where cropping would drop a border and padding would add cells over no image.

        Args:
            images: (B, 3, H, W) float in [0, 1].

        Returns:
            features (B, cfg.dim, h, w) with (h, w) = cfg.grid(H, W); (H // stride, W // stride) when H and W are
            multiples of cfg.input_multiple.
        """
        height, width = images.shape[-2:]
        size = self.cfg.input_shape(height, width)
        if size != (height, width):
            if (height, width) not in self._resized_from:
                self._resized_from.add((height, width))
                logger.warning("backbone %s: image size %dx%d is not a multiple of %d; resizing to %dx%d",
                               self.cfg.name, height, width, self.cfg.input_multiple, *size)
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        return self.body((images - self.mean) / self.std)


Builder = Callable[[Path | None, bool], Backbone]
_REGISTRY: dict[str, tuple[BackboneCfg, Builder]] = {}


def register_backbone(cfg: BackboneCfg) -> Callable[[Builder], Builder]:
    """Decorator: registers `builder(weights_path, pretrained) -> Backbone` under cfg.name."""

    def decorate(builder: Builder) -> Builder:
        if cfg.name in _REGISTRY:
            raise ValueError(f"backbone {cfg.name!r} is registered twice")
        _REGISTRY[cfg.name] = (cfg, builder)
        return builder

    return decorate


def list_backbones() -> list[str]:
    """Every registered name, sorted."""
    return sorted(_REGISTRY)


def backbone_cfg(name: str) -> BackboneCfg:
    """The cfg of a registered backbone, without building it.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(list_backbones())}")
    return _REGISTRY[name][0]


def create_backbone(name: str, weights: str | Path | None = None, pretrained: bool = True) -> Backbone:
    """Builds a frozen backbone in eval mode.

    Args:
        name: a registry name (see list_backbones()).
        weights: a local checkpoint file; None loads from the backbone's usual source (cfg.weights_source).
        pretrained: False gives random weights (a loud warning: features are then meaningless).

    Raises:
        ValueError: unknown name; a checkpoint that is unreadable or does not fit the architecture.
        FileNotFoundError: `weights` names no file.
        RuntimeError: `weights=None` and the usual source cannot be reached (e.g. no network); the message says how
            to pass a local file.
    """
    backbone_cfg(name)  # an unknown name fails first, listing the valid ones
    path = Path(weights).expanduser() if weights else None
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"backbone {name}: weights file {path} does not exist")
    if not pretrained:
        logger.warning("backbone %s built with RANDOM weights (features.pretrained=false): features carry no "
                       "learned semantics%s", name, f"; features.weights={path} is IGNORED" if path else "")
    model = _REGISTRY[name][1](path, pretrained)
    model.eval().requires_grad_(False)
    return model
