"""Self-supervised Vision Transformers (DINO, DINOv2, DINOv3) built by timm, with dense patch-token output.

The dense output is what PriMaPs and the k-means baselines use: the patch tokens of the last block after the final
LayerNorm (DINO's `get_intermediate_layers(x, 1)` [0], timm's `forward_features` [2]), the class and register tokens
dropped, reshaped to (B, C, H / p, W / p). Models are created with `dynamic_img_size=True`, so any input whose sides
are multiples of the patch size p works; timm interpolates the position embeddings (bicubic) to the input grid.

Weights: a local file in the official layout of DINO [0] / DINOv2 [1] / DINOv3 [3] (their `*_pretrain.pth`, or a
training checkpoint with "teacher"/"student"), or in timm's layout (.safetensors or .pth). Official layouts are
converted by timm's own checkpoint filters (`vision_transformer.checkpoint_filter_fn`, `eva.checkpoint_filter_fn`).
`weights=None` downloads timm's copy from the Hugging Face hub (network needed).

[0] https://arxiv.org/abs/2104.14294 (DINO), https://github.com/facebookresearch/dino
[1] https://arxiv.org/abs/2304.07193 (DINOv2), https://github.com/facebookresearch/dinov2
[2] https://github.com/huggingface/pytorch-image-models (timm)
[3] https://arxiv.org/abs/2508.10104 (DINOv3), https://github.com/facebookresearch/dinov3
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from unseg.core.backbones.checkpoint import load_into, misfit_message, read_state_dict, shape_mismatches
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

_DINO = "https://dl.fbaipublicfiles.com/dino/"
_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2/"
_DINOV3 = "Meta's DINOv3 download form (https://github.com/facebookresearch/dinov3, licence acceptance needed): "


@dataclass(frozen=True)
class ViTSpec:
    """The registry arguments of one ViT entry.

    Attributes:
        arch: timm model name with its pretrained tag (the tag picks mean/std and the hub weights).
        dim: embedding width (the output channels).
        patch: patch size (the output stride).
        official: the official checkpoint file users download.
        arch_qkv_bias: timm twin with q/v attention biases, built instead when a checkpoint holds non-zero ones
            (DINOv3: timm's default S/B models have none, the official checkpoints store a qkv bias).
    """

    arch: str
    dim: int
    patch: int
    official: str
    arch_qkv_bias: str | None = None


VIT_SPECS: dict[str, ViTSpec] = {
    "dino_vits8": ViTSpec("vit_small_patch8_224.dino", 384, 8,
                          _DINO + "dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth"),
    "dino_vitb8": ViTSpec("vit_base_patch8_224.dino", 768, 8,
                          _DINO + "dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth"),
    "dino_vits16": ViTSpec("vit_small_patch16_224.dino", 384, 16,
                           _DINO + "dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth"),
    "dino_vitb16": ViTSpec("vit_base_patch16_224.dino", 768, 16,
                           _DINO + "dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"),
    "dinov2_vits14": ViTSpec("vit_small_patch14_dinov2.lvd142m", 384, 14,
                             _DINOV2 + "dinov2_vits14/dinov2_vits14_pretrain.pth"),
    "dinov2_vitb14": ViTSpec("vit_base_patch14_dinov2.lvd142m", 768, 14,
                             _DINOV2 + "dinov2_vitb14/dinov2_vitb14_pretrain.pth"),
    "dinov2_vits14_reg": ViTSpec("vit_small_patch14_reg4_dinov2.lvd142m", 384, 14,
                                 _DINOV2 + "dinov2_vits14/dinov2_vits14_reg4_pretrain.pth"),
    "dinov2_vitb14_reg": ViTSpec("vit_base_patch14_reg4_dinov2.lvd142m", 768, 14,
                                 _DINOV2 + "dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth"),
    "dinov3_vits16": ViTSpec("vit_small_patch16_dinov3.lvd1689m", 384, 16,
                             _DINOV3 + "dinov3_vits16_pretrain_lvd1689m-08c60483.pth",
                             arch_qkv_bias="vit_small_patch16_dinov3_qkvb.lvd1689m"),
    "dinov3_vitb16": ViTSpec("vit_base_patch16_dinov3.lvd1689m", 768, 16,
                             _DINOV3 + "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth",
                             arch_qkv_bias="vit_base_patch16_dinov3_qkvb.lvd1689m"),
}


class ViTDense(nn.Module):
    """A timm ViT as a dense extractor: (B, 3, H, W) -> last-block patch tokens (B, C, H / p, W / p)."""

    def __init__(self, model: nn.Module, patch: int) -> None:
        super().__init__()
        self.model = model
        self.patch = patch
        self.num_prefix_tokens = int(model.num_prefix_tokens)  # class token + register tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, 3, H, W) normalised, H and W multiples of the patch. Returns: (B, C, H / p, W / p)."""
        batch, _, height, width = x.shape
        tokens = self.model.forward_features(x)  # (B, prefix + h * w, C), final norm applied
        patches = tokens[:, self.num_prefix_tokens:]
        return patches.transpose(1, 2).reshape(batch, -1, height // self.patch, width // self.patch)


def create_timm(arch: str, pretrained: bool = False, empty: bool = False) -> nn.Module:
    """A timm ViT with dynamic input size and no classifier head.

    Args:
        arch: timm model name with tag.
        pretrained: download timm's weights (network, or the hub cache).
        empty: parameters allocated but left uninitialised, for a checkpoint to overwrite: skips the random init
            (seconds for a ViT-B on a CPU). Computed buffers (RoPE periods) are filled in.
    """
    import timm  # imported on first use: importing timm takes seconds
    from timm.models._manipulate import reinit_non_persistent_buffers

    kwargs = {"pretrained": pretrained, "dynamic_img_size": True, "num_classes": 0}
    if not empty:
        return timm.create_model(arch, **kwargs)
    model = timm.create_model(arch, device="meta", **kwargs)
    saved = set(model.state_dict())
    owners = {name.rpartition(".")[0] for name, _ in model.named_buffers() if name not in saved}
    if not all(hasattr(model.get_submodule(owner), "init_non_persistent_buffers") for owner in owners):
        return timm.create_model(arch, **kwargs)  # a computed buffer timm cannot recompute: build normally
    model.to_empty(device="cpu")
    reinit_non_persistent_buffers(model)
    return model


def _has_qkv_bias(state: dict[str, torch.Tensor]) -> bool:
    """Whether a checkpoint holds non-zero query/value biases (official DINOv3 "qkv.bias" or timm "q_bias")."""
    for key, value in state.items():
        if key.endswith("attn.qkv.bias"):
            q, _, v = value.chunk(3, dim=-1)  # the key bias is masked to zero in DINOv3
            if q.abs().max() > 0 or v.abs().max() > 0:
                return True
        elif key.endswith(("attn.q_bias", "attn.v_bias")) and value.abs().max() > 0:
            return True
    return False


def load_vit_checkpoint(spec: ViTSpec, path: Path, name: str) -> nn.Module:
    """Builds the timm model of `spec` and loads a local checkpoint (official or timm layout) into it.

    Raises:
        ValueError: unreadable file, or keys/shapes that do not fit (named in the message).
    """
    state = read_state_dict(path, name)
    head = [k for k in state if k.startswith("head.")]
    if head:  # a classifier of a fine-tuned model: the dense output never uses it
        logger.info("%s: ignoring the classifier %s of %s", name, head, path)
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    arch = spec.arch_qkv_bias if spec.arch_qkv_bias and _has_qkv_bias(state) else spec.arch
    model = create_timm(arch, empty=True)  # every parameter comes from the checkpoint, or it is refused
    # timm would silently resample a patch embedding of another size (e.g. a /16 checkpoint into a /8 model)
    kernel = state.get("patch_embed.proj.weight")
    own = model.patch_embed.proj.weight
    wrong_kernel = []
    if kernel is not None and tuple(kernel.shape) != tuple(own.shape):
        wrong_kernel = [f"patch_embed.proj.weight: checkpoint {tuple(kernel.shape)} vs model {tuple(own.shape)}"]
        state = {k: v for k, v in state.items() if k != "patch_embed.proj.weight"}
    from timm.models import eva, vision_transformer

    # official layouts -> timm's; a position embedding of another grid is resampled (timm logs it)
    filter_fn = eva.checkpoint_filter_fn if isinstance(model, eva.Eva) else vision_transformer.checkpoint_filter_fn
    with contextlib.redirect_stdout(io.StringIO()) as said:  # timm's eva filter prints when it drops a qkv bias
        state = filter_fn(state, model)
    if said.getvalue().strip():
        logger.debug("%s: timm checkpoint filter: %s", name, said.getvalue().strip())
    if wrong_kernel:
        raise ValueError(misfit_message(name, path, [], [], wrong_kernel + shape_mismatches(model, state)))
    load_into(model, state, name, path)
    return model


def build_vit(name: str, weights: Path | None, pretrained: bool) -> Backbone:
    """The shared builder of every ViT entry.

    Args:
        name: registry name (a key of VIT_SPECS).
        weights: a local checkpoint, or None for timm's hub copy (when pretrained).
        pretrained: False gives random weights.

    Returns:
        Backbone with output (B, dim, H / patch, W / patch).
    """
    spec = VIT_SPECS[name]
    cfg = backbone_cfg(name)
    if not pretrained:
        model = create_timm(spec.arch)
    elif weights is not None:
        model = load_vit_checkpoint(spec, weights, name)
    else:
        model = pretrained_or_explain(cfg, lambda: create_timm(spec.arch, pretrained=True))
    return Backbone(cfg, ViTDense(model, spec.patch))


for _name, _spec in VIT_SPECS.items():
    register_backbone(BackboneCfg(
        name=_name, dim=_spec.dim, stride=_spec.patch, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        input_multiple=_spec.patch, arch=f"timm {_spec.arch}", input_size=322 if _spec.patch == 14 else 320,
        weights_source=f"timm's copy on the Hugging Face hub (hf-hub:timm/{_spec.arch}); official file: "
                       f"{_spec.official}",
    ))(partial(build_vit, _name))
