"""torchvision ResNets (ImageNet, as PiCIE initialises them) with dense output at stride 16.

The dense output is stage res4 (torchvision's `layer3`): 256 channels for ResNet-18, 1024 for ResNet-50, at stride 16
(20x20 for a 320 input, the grid of a /16 ViT). res5 (stride 32) would give 10x10, too coarse to segment, and
torchvision cannot dilate the BasicBlocks of ResNet-18 to keep stride 16. PiCIE's own network (ResNet + FPN, trained)
lives in `unseg.core.picie`; this entry is the frozen-feature view for k-means baselines and PriMaPs.

Weights: a torchvision .pth state dict (keys `conv1.weight`, `layer1.0.bn1.running_mean`, ...; `layer4.*` and `fc.*`
are not used and left out), possibly wrapped under "state_dict"/"model" with a "module." prefix; `weights=None` is
torchvision's IMAGENET1K_V1 download.

[0] https://arxiv.org/abs/1512.03385 (ResNet); https://arxiv.org/abs/2103.17070 (PiCIE)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from unseg.core.backbones.checkpoint import load_into, read_state_dict
from unseg.core.backbones.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    BackboneCfg,
    backbone_cfg,
    register_backbone,
)
from unseg.core.backbones.weights import pretrained_or_explain

logger = logging.getLogger(__name__)

STRIDE = 16
UNUSED = ("layer4.", "fc.")  # the stages after res4 and the classifier


@dataclass(frozen=True)
class ResNetSpec:
    """The registry arguments of one ResNet entry: torchvision builder and weights enum names, res4 channels."""

    arch: str
    weights_enum: str
    dim: int
    url: str


_TORCHVISION = "https://download.pytorch.org/models/"
RESNET_SPECS: dict[str, ResNetSpec] = {
    "resnet18": ResNetSpec("resnet18", "ResNet18_Weights", 256, _TORCHVISION + "resnet18-f37072fd.pth"),
    "resnet50": ResNetSpec("resnet50", "ResNet50_Weights", 1024, _TORCHVISION + "resnet50-0676ba61.pth"),
}


class ResNetDense(nn.Module):
    """The stem and stages res2..res4 of a torchvision ResNet, under torchvision's names (checkpoints load as is)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, 3, H, W) normalised, H and W multiples of 16. Returns: res4 (B, C, H / 16, W / 16)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


def build_resnet(name: str, weights: Path | None, pretrained: bool) -> Backbone:
    """The shared builder of the ResNet entries.

    Args:
        name: registry name (a key of RESNET_SPECS).
        weights: a local torchvision-layout checkpoint, or None for torchvision's IMAGENET1K_V1 download.
        pretrained: False gives random weights.

    Returns:
        Backbone with output (B, dim, H / 16, W / 16).

    Raises:
        ValueError: a checkpoint that does not fit (keys named).
        RuntimeError: the download failed (the message says how to pass a local file).
    """
    import torchvision  # imported on first use: it takes seconds

    spec = RESNET_SPECS[name]
    cfg = backbone_cfg(name)
    make = getattr(torchvision.models, spec.arch)
    if pretrained and weights is None:
        enum = getattr(torchvision.models, spec.weights_enum).IMAGENET1K_V1
        net = pretrained_or_explain(cfg, lambda: make(weights=enum))
        return Backbone(cfg, ResNetDense(net))
    body = ResNetDense(make(weights=None))
    if pretrained and weights is not None:
        state = read_state_dict(weights, name)
        unused = [k for k in state if k.startswith(UNUSED)]
        if unused:
            logger.info("%s: leaving out %d tensors of res5 and the classifier (%s, ...)", name, len(unused),
                        ", ".join(unused[:2]))
        load_into(body, {k: v for k, v in state.items() if not k.startswith(UNUSED)}, name, weights)
    return Backbone(cfg, body)


for _name, _spec in RESNET_SPECS.items():
    register_backbone(BackboneCfg(
        name=_name, dim=_spec.dim, stride=STRIDE, mean=IMAGENET_MEAN, std=IMAGENET_STD, input_multiple=STRIDE,
        arch=f"torchvision {_spec.arch} (res4 = layer3)", input_size=320,
        weights_source=f"torchvision {_spec.weights_enum}.IMAGENET1K_V1 ({_spec.url})",
    ))(partial(build_resnet, _name))
