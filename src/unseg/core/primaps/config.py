"""Parameters blocks -> frozen config dataclasses, with the keys checked once at the boundary."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def parse_config(cls: type[T], params: Mapping[str, Any], block: str, **extra: Any) -> T:
    """Builds `cls` from a parameters block.

    Args:
        cls: a dataclass.
        params: the block, e.g. the value of `primaps.proposals`.
        block: its name, for error messages.
        **extra: fields that come from elsewhere (e.g. the seed).

    Raises:
        ValueError: a key that is not a field of `cls` (valid keys listed), or a field value the dataclass rejects.
    """
    valid = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(params) - valid
    if unknown:
        raise ValueError(f"{block}: unknown keys {sorted(unknown)}; valid: {', '.join(sorted(valid))}")
    return cls(**{**dict(params), **extra})
