"""Frozen backbones behind one dense-feature interface, chosen by name (see `registry`)."""

from unseg.core.backbones.registry import Backbone, BackboneCfg, create_backbone, list_backbones, register_backbone
from unseg.core.backbones import efficientnet as _efficientnet  # noqa: F401  (registers its entries)

__all__ = ["Backbone", "BackboneCfg", "create_backbone", "list_backbones", "register_backbone"]
