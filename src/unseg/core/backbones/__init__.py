"""Frozen backbones behind one dense-feature interface, chosen by name (see `registry` and docs/backbones.md).

Families: DINO / DINOv2 / DINOv3 ViTs through timm (`vit`), torchvision ResNets (`resnet`) and the offline
EfficientNet-Lite0 default (`efficientnet`). Importing this package registers them all; timm and torchvision are
imported only when a backbone of theirs is built.
"""

from unseg.core.backbones import efficientnet as _efficientnet  # noqa: F401  (registers its entries)
from unseg.core.backbones import resnet as _resnet  # noqa: F401
from unseg.core.backbones import vit as _vit  # noqa: F401
from unseg.core.backbones.registry import (
    Backbone,
    BackboneCfg,
    backbone_cfg,
    create_backbone,
    list_backbones,
    register_backbone,
)

__all__ = ["Backbone", "BackboneCfg", "backbone_cfg", "create_backbone", "list_backbones", "register_backbone"]
