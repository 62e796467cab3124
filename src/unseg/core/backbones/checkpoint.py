"""Reading local checkpoint files into a backbone, with errors that name what does not fit.

Accepted files: PyTorch pickles read with `weights_only=True` (.pth, .pt, .bin, ...) and safetensors files
(.safetensors). Training checkpoints are unwrapped: DINO's `checkpoint.pth` holds {"student", "teacher", "args", ...}
with keys under "module." / "backbone." prefixes [0]; timm and torchvision training scripts wrap the weights under
"state_dict" or "model". The teacher is taken over the student, as DINO's own evaluation does.

[0] https://arxiv.org/abs/2104.14294 (DINO)
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

# looked for in this order when a file holds a dict of more than tensors
WRAPPER_KEYS = ("teacher", "state_dict", "model", "module", "student")
SHOWN = 10  # keys named per kind of mismatch in an error message


EXPECTED = ("expected a checkpoint: a dict of parameter name -> tensor saved with torch.save (.pth, .pt, .bin) or as "
            f".safetensors, possibly wrapped in a training checkpoint under one of {list(WRAPPER_KEYS)}")


def _first_line(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{err.__class__.__name__}: {text}" if text else err.__class__.__name__


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values())


def read_state_dict(path: Path, name: str, unwrap: bool = True,
                    prefixes: Iterable[str] = ("module.", "backbone.")) -> dict[str, torch.Tensor]:
    """Reads a flat name -> tensor dict from a local file.

    Args:
        path: a PyTorch pickle or a .safetensors file.
        name: the backbone, for messages.
        unwrap: descend into WRAPPER_KEYS while the dict holds more than tensors.
        prefixes: each, when some key starts with it, is stripped, and the keys without it are left out (so the DINO
            projection head "head.*" next to "backbone.*" is dropped).

    Returns:
        the state dict, on the CPU.

    Raises:
        ValueError: the file is not readable as a checkpoint, or holds no dict of tensors.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own SafetensorError, and OSError
            raise ValueError(f"{name}: {path} is not a readable safetensors file ({_first_line(err)}); "
                             f"{EXPECTED}") from err
    else:
        try:
            # DINO training checkpoints store their argparse Namespace next to the weights
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - a non-checkpoint file fails in many ways (a text file beginning
            # with "h" gives KeyError 101 from the unpickler's memo, others UnpicklingError, EOFError, ...)
            raise ValueError(f"{name}: {path} is not a readable PyTorch state dict ({_first_line(err)}); "
                             f"{EXPECTED}") from err
    if not isinstance(obj, Mapping):
        raise ValueError(f"{name}: {path} holds a {type(obj).__name__}, not a state dict; {EXPECTED}")
    trail = []
    while unwrap and not _is_tensor_dict(obj):
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            raise ValueError(f"{name}: {path} holds a dict that is neither a state dict nor one under any of "
                             f"{list(WRAPPER_KEYS)}; its keys: {list(obj)[:SHOWN]}")
        trail.append(key)
        obj = obj[key]
    if not _is_tensor_dict(obj):
        others = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        raise ValueError(f"{name}: {path} is not a state dict: entries {others[:SHOWN]} are not tensors")
    state = dict(obj)
    if trail:
        logger.info("%s: using the weights under %s of %s", name, " -> ".join(repr(k) for k in trail), path)
    changed = True
    while changed:  # e.g. DINO's student: "module.backbone.blocks.0..."
        changed = False
        for prefix in prefixes:
            if any(k.startswith(prefix) for k in state):
                left_out = [k for k in state if not k.startswith(prefix)]
                if left_out:
                    logger.info("%s: kept the %d tensors under %r, left out %d others (%s, ...)", name,
                                len(state) - len(left_out), prefix, len(left_out), ", ".join(left_out[:3]))
                state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
                changed = True
    return state


def misfit_message(name: str, path: Path, missing: list[str], unexpected: list[str],
                   wrong_shapes: list[str]) -> str:
    """One error message naming (the first SHOWN of) each kind of mismatch."""
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shapes)):
        if keys:
            more = f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
            parts.append(f"{label} ({len(keys)}): {keys[:SHOWN]}{more}")
    return f"{name}: checkpoint {path} does not fit: " + "; ".join(parts)


def shape_mismatches(module: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """'key: checkpoint (shape) vs model (shape)' for every key both hold with different shapes."""
    own = module.state_dict()
    return [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
            if k in own and tuple(v.shape) != tuple(own[k].shape)]


def load_into(module: nn.Module, state: Mapping[str, torch.Tensor], name: str, path: Path) -> None:
    """Loads `state` into `module`, all of it and nothing else.

    Args:
        module: the network, its parameter names already matching the checkpoint's.
        state: name -> tensor.
        name / path: for messages.

    Raises:
        ValueError: keys missing from or unexpected in `state`, or tensors of the wrong shape; the message names them.
    """
    wrong = shape_mismatches(module, state)
    if wrong:
        raise ValueError(misfit_message(name, path, [], [], wrong))
    result = module.load_state_dict(state, strict=False)  # BatchNorm fills a missing num_batches_tracked itself
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(misfit_message(name, path, list(result.missing_keys), list(result.unexpected_keys), []))
