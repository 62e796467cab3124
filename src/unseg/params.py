"""Every parameter of a run checked when the run starts, before any node runs.

Nodes turn their `params:` blocks into the frozen config dataclasses of `unseg.core`, which check keys and values,
but only when the node runs: a misspelt nested key (`primaps.em.epoch`) or a bad value (`seed: -1`) surfaced after
minutes of PiCIE training, and a misspelt top-level block (`datset.root`) was never read at all, so the run went on
with the defaults. `validate_parameters` walks the merged parameters against `SCHEMA`: each block maps to the
dataclass its node builds (built here the same way: the seed, `init` and a null cluster count filled in as the node
fills them), the types its field annotations give are checked (the dataclasses compare values but leave types to the
caller), and the few plain values that have no dataclass get a check of their own. Every problem is reported at
once, each naming the key and the valid keys or values. `unseg.hooks.RunChecksHook` calls it as the run starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unseg.core.backbones import list_backbones
from unseg.core.data.prepare import decode_workers
from unseg.core.data.sources import DatasetConfig
from unseg.core.data.synthetic import SyntheticConfig
from unseg.core.devices import resolve_device
from unseg.core.kmeans import KMeansConfig
from unseg.core.linear_probe import LinearProbeConfig
from unseg.core.loader import resolve_num_workers
from unseg.core.picie import ClusterConfig, EvalConfig, LossConfig, NetworkConfig, TrainConfig, ViewConfig
from unseg.core.predict import PredictConfig
from unseg.core.primaps.crf import CRFConfig
from unseg.core.primaps.proposals import ProposalConfig
from unseg.core.primaps.train import INITS, EMConfig
from unseg.pipelines.primaps.nodes import _base_setting

MAX_SEED = 2**31 - 1  # faiss takes the seed as a C int (2**31 raises OverflowError in the k-means)
PRIMAPS_BASES = ("primaps_em", "picie_primaps_em")  # the EM instances of unseg.pipelines.primaps, one base block each


class ParameterError(ValueError):
    """The run's parameters do not fit the schema; the message lists every problem, one a line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} invalid parameter(s) (conf/<env>/parameters*.yml and --params); nothing "
                         "was run:\n  - " + "\n  - ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Context:
    """What a block's check needs from other blocks (each falls back to a valid value when its own block is bad, so
    that one mistake is reported once)."""

    seed: int = 0
    num_classes: int = 1
    augment: bool = False


Check = Callable[[Any, Context], None]  # raises ValueError (or TypeError, KeyError) naming the problem


# ------------------------------------------------------------------------------------------------ plain values
def integer(low: int, high: int | None = None) -> Check:
    """An int (not a bool) in [low, high]."""
    bounds = f">= {low}" if high is None else f"in [{low}, {high}]"

    def check(value: Any, ctx: Context) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            raise ValueError(f"must be an integer {bounds}, got {value!r}")

    return check


def boolean(value: Any, ctx: Context) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")


def text_or_null(value: Any, ctx: Context) -> None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"must be a string or null, got {value!r}")


def workers(value: Any, ctx: Context) -> None:
    decode_workers(value)  # an integer >= 0 or "auto"


def device(value: Any, ctx: Context) -> None:
    if not isinstance(value, str):
        raise ValueError(f"must be a string (auto, cpu, cuda or cuda:<index>), got {value!r}")
    resolve_device(value)  # an unknown name, or CUDA asked for where there is none


def num_workers(value: Any, ctx: Context) -> None:
    resolve_num_workers(value, torch.device("cpu"))  # "auto" or an integer >= 0


def backbone(value: Any, ctx: Context) -> None:
    if value not in list_backbones():
        raise ValueError(f"unknown backbone {value!r}; valid: {', '.join(list_backbones())}")


def weights_file(value: Any, ctx: Context) -> None:
    text_or_null(value, ctx)
    if value is not None and not Path(value).expanduser().is_file():
        raise ValueError(f"{value!r}: no such file (a local checkpoint file, or null for the backbone's usual source)")


def primaps_base(value: Any, ctx: Context) -> None:
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a block with keys augment, features, init; got {value!r}")
    _base_setting(dict(value), ctx.augment)  # unknown keys, features, augment with a cached base
    if value["init"] not in INITS:
        raise ValueError(f"init {value['init']!r}; valid: {', '.join(INITS)}")


# ------------------------------------------------------------------------------------------- dataclass blocks
@dataclass(frozen=True)
class Block:
    """A parameters block that its node builds into the config dataclass `cls`.

    Attributes:
        cls: the frozen config dataclass.
        derived: its fields the node fills from other parameters (not keys of the block): seed, init.
        clusters: the field whose null (or 0) the node replaces by dataset.num_classes.
        node_keys: keys the node reads itself, beside the dataclass's (key -> check); all required.
        nested: keys holding a block of their own (key -> Block), checked with the path extended.
        build: builds the dataclass from (block, context) where the node does more than cls(**block).
    """

    cls: type
    derived: tuple[str, ...] = ()
    clusters: str | None = None
    node_keys: Mapping[str, Check] = field(default_factory=dict)
    nested: Mapping[str, Block] = field(default_factory=dict)
    build: Callable[[dict[str, Any], Context], Any] | None = None

    def problems(self, value: Any, path: str, ctx: Context) -> list[str]:
        """Every problem of the block `value` at `path`, one message each."""
        fields = {f.name: f for f in dataclasses.fields(self.cls)}
        valid = sorted({*fields, *self.node_keys} - set(self.derived))
        if not isinstance(value, Mapping):
            return [f"{path}: must be a block with keys {', '.join(valid)}; got {value!r}"]
        found = [unknown_key(path, key, valid) for key in value if key not in valid]
        required = [name for name, f in fields.items() if name not in self.derived and name != self.clusters
                    and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        found += [f"{join(path, key)}: missing" for key in [*required, *self.node_keys] if key not in value]
        for key, check in self.node_keys.items():
            if key in value:
                found += run_check(check, value[key], join(path, key), ctx)
        hints = typing.get_type_hints(self.cls)
        if self.clusters:
            hints[self.clusters] = hints[self.clusters] | None  # null: dataset.num_classes
        found += [f"{join(path, key)}: must be {type_name(hints[key])}, got {value[key]!r}"
                  for key in value if key in fields and key not in self.derived and not fits(value[key], hints[key])]
        for key, block in self.nested.items():
            if key in value:
                found += block.problems(value[key], join(path, key), ctx)
        if found:
            return found  # building would only repeat them less clearly
        values = {k: v for k, v in value.items() if k in fields}
        if self.clusters and not values.get(self.clusters):  # the nodes: `values.get(k) or num_classes`
            values[self.clusters] = ctx.num_classes
        derived = {"seed": ctx.seed, "init": INITS[0]}
        try:
            if self.build is not None:
                self.build(values, ctx)
            else:
                self.cls(**values, **{k: derived[k] for k in self.derived})
        except (ValueError, TypeError) as err:
            return [f"{path}: {err}"]
        return []


def _dataset(values: dict[str, Any], ctx: Context) -> None:
    DatasetConfig.from_params(values, ctx.seed)


def _synthetic(values: dict[str, Any], ctx: Context) -> None:
    SyntheticConfig(**{"seed": ctx.seed, **values})  # as materialise_synthetic: its own seed wins


def _kmeans() -> Block:
    return Block(KMeansConfig, derived=("seed",), clusters="num_clusters")


# The schema of the merged parameters: nested dicts of keys, down to a Block (a config dataclass) or a check.
SCHEMA: dict[str, Any] = {
    "seed": integer(0, MAX_SEED),
    "device": device,
    "dataset": Block(DatasetConfig, derived=("seed",), build=_dataset,
                     nested={"synthetic": Block(SyntheticConfig, build=_synthetic)}),
    "ingestion": {"shard_size": integer(1), "num_workers": workers},
    "features": {"backbone": backbone, "weights": weights_file, "pretrained": boolean, "batch_size": integer(1)},
    "evaluation": {"rgb_kmeans": _kmeans(), "kmeans": _kmeans(),
                   "linear_probe": Block(LinearProbeConfig, derived=("seed",)), "overlay_images": integer(0)},
    "picie": {"network": Block(NetworkConfig), "views": Block(ViewConfig),
              "clustering": Block(ClusterConfig, clusters="num_clusters"), "loss": Block(LossConfig),
              "train": Block(TrainConfig), "eval": Block(EvalConfig, clusters="num_clusters")},
    "primaps": {"augment": boolean, "proposals": Block(ProposalConfig), "crf": Block(CRFConfig),
                "em": Block(EMConfig, derived=("seed", "init"), clusters="num_prototypes",
                            node_keys={"checkpoint_dir": text_or_null, "monitor_val": boolean}),
                "base": {method: primaps_base for method in PRIMAPS_BASES},
                "preview_images": integer(0)},
    "predict": Block(PredictConfig),
    "loader": {"num_workers": num_workers},
}


# ------------------------------------------------------------------------------------------------------- walk
def join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def unknown_key(path: str, key: Any, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f" (did you mean {join(path, close[0])}?)" if close else ""
    where = f"of {path}" if path else "at the top level"
    return f"{join(path, key)}: unknown parameter{hint}; valid keys {where}: {', '.join(valid)}"


def run_check(check: Check, value: Any, path: str, ctx: Context) -> list[str]:
    try:
        check(value, ctx)
    except KeyError as err:
        return [f"{path}: missing key {err}"]
    except (ValueError, TypeError) as err:
        return [f"{path}: {err}"]
    return []


def fits(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a dataclass field annotation (int, float, bool, str, None, unions, tuples,
    mappings; anything else is left to the dataclass)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return value is None
    if origin in (types.UnionType, typing.Union):
        return any(fits(value, arg) for arg in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(fits(v, a) for v, a in zip(value, args, strict=True))
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        return isinstance(value, Mapping)
    return True


def type_name(hint: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return " or ".join(type_name(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f"a list ({hint})"
    return names.get(hint, str(hint))


def _walk(value: Any, schema: Any, path: str, ctx: Context) -> list[str]:
    if isinstance(schema, Block):
        return schema.problems(value, path, ctx)
    if not isinstance(schema, dict):
        return run_check(schema, value, path, ctx)
    valid = list(schema)
    if not isinstance(value, Mapping):
        return [f"{path}: must be a block with keys {', '.join(valid)}; got {value!r}"]
    found = [unknown_key(path, key, valid) for key in value if key not in schema]
    for key, sub in schema.items():
        if key in value:
            found += _walk(value[key], sub, join(path, key), ctx)
        else:
            found.append(f"{join(path, key)}: missing")
    return found


def _context(params: Mapping[str, Any]) -> Context:
    """The values other blocks depend on, where they are valid themselves."""
    seed, dataset, primaps = params.get("seed"), params.get("dataset"), params.get("primaps")
    num_classes = dataset.get("num_classes") if isinstance(dataset, Mapping) else None
    augment = primaps.get("augment") if isinstance(primaps, Mapping) else None
    return Context(seed=seed if not run_check(SCHEMA["seed"], seed, "seed", Context()) else 0,
                   num_classes=num_classes if not run_check(integer(1), num_classes, "", Context()) else 1,
                   augment=augment if isinstance(augment, bool) else False)


def parameter_problems(params: Mapping[str, Any]) -> list[str]:
    """Every problem of the merged parameters, one message each (empty: valid)."""
    return _walk(params, SCHEMA, "", _context(params))


def validate_parameters(params: Mapping[str, Any]) -> None:
    """Checks the merged parameters of a run (every environment's, plus --params) against SCHEMA.

    Raises:
        ParameterError: unknown or missing keys, values of the wrong type or outside their range; the message lists
            every problem with its key and the valid keys or values.
    """
    problems = parameter_problems(params)
    if problems:
        raise ParameterError(problems)
