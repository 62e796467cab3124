"""Backbone registry: a name maps to a builder and a cfg of the facts every caller needs.

Every backbone is a `Backbone`: it takes RGB images in [0, 1] of shape (B, 3, H, W), normalises them itself with its
own mean/std, and returns dense features (B, C, H / stride, W / stride). Callers never need to know which family a
backbone comes from (the timm `forward_features` idea, [0]).

[0] https://github.com/huggingface/pytorch-image-models/blob/main/timm/models/_registry.py
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneCfg:
    """Facts about one registry entry.

    Attributes:
        name: registry name.
        dim: channels C of the dense output.
        stride: input pixels per output cell.
        mean / std: per-channel input normalisation, applied inside the backbone.
        input_multiple: image sides must be a multiple of this (the patch size of a ViT, else the stride).
        weights_source: where `weights=None` loads from, in words (for errors and the run's params).
    """

    name: str
    dim: int
    stride: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_multiple: int
    weights_source: str


class Backbone(nn.Module):
    """A frozen dense feature extractor: (B, 3, H, W) in [0, 1] -> (B, C, H / stride, W / stride)."""

    def __init__(self, cfg: BackboneCfg, body: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.body = body
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images (B, 3, H, W) float in [0, 1], H and W multiples of cfg.input_multiple.

        Returns: features (B, cfg.dim, H // cfg.stride, W // cfg.stride).
        """
        height, width = images.shape[-2:]
        if height % self.cfg.input_multiple or width % self.cfg.input_multiple:
            raise ValueError(f"backbone {self.cfg.name}: image size {height}x{width} is not a multiple of "
                             f"{self.cfg.input_multiple}; choose an evaluation crop that is")
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
    return sorted(_REGISTRY)


def backbone_cfg(name: str) -> BackboneCfg:
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
        ValueError: unknown name.
        FileNotFoundError: `weights` names no file.
    """
    cfg = backbone_cfg(name)
    path = Path(weights).expanduser() if weights else None
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"backbone {name}: weights file {path} does not exist")
    if not pretrained:
        logger.warning("backbone %s built with RANDOM weights (features.pretrained=false): features carry no "
                       "learned semantics", name)
    model = _REGISTRY[name][1](path, pretrained)
    model.eval().requires_grad_(False)
    return model
