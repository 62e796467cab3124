"""A prepared-store stream of synthetic scenes for tests that need a small `prm_*_images` store without ingestion.

Importable from any test module (pytest puts tests/ on sys.path for its conftest): `from scenes import SceneStream`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from unseg.core.data.synthetic import SyntheticConfig, iter_split
from unseg.core.store import FieldSpec, Shard


class SceneStream:
    """`count` synthetic scenes (image and label) of `side` x `side` from `split`, 8 per shard (an ArrayStream)."""

    def __init__(self, split: str, count: int, side: int, **attrs: Any) -> None:
        config = SyntheticConfig(num_train=max(count, 1), num_val=max(count, 1), height=side, width=side)
        self.items = list(iter_split(config, split))[:count]
        self.fields = {"image": FieldSpec("uint8", (side, side, 3)), "label": FieldSpec("uint8", (side, side))}
        self.attrs: dict[str, Any] = {"split": split, **attrs}
        self.fingerprint = f"scenes-{split}-{count}-{side}"
        self.num_shards = (count + 7) // 8

    def iter_shards(self, todo: Sequence[int]) -> Iterator[Shard]:
        for index in todo:
            chunk = self.items[index * 8:(index + 1) * 8]
            yield Shard(index, [i for i, _, _ in chunk], {"image": np.stack([im for _, im, _ in chunk]),
                                                          "label": np.stack([lb for _, _, lb in chunk])})
