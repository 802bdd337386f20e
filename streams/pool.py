"""The global candidate pool for ``gn`` sampling: the most recent distinct items, bounded.

A ring buffer of slots: a new item takes the oldest slot, a known item keeps its slot (its
content type is refreshed). Sampling is uniform over the slots, O(k).

Examples
--------
>>> import numpy as np
>>> pool = CandidatePool(capacity=3)
>>> for i in "abcd":
...     pool.add(i, "video")
>>> sorted(pool.items())
['b', 'c', 'd']
>>> pool.sample(2, exclude={"b"}, rng=np.random.default_rng(0))
[('c', 'video'), ('d', 'video')]
>>> pool.add_many(["c", "e"], ["news", "video"])
>>> sorted(pool.items()), pool.types["c"]
(['c', 'd', 'e'], 'news')
"""

from __future__ import annotations

from collections.abc import Container, Sequence

import numpy as np


class CandidatePool:
    """Recency-bounded set of ``item_id -> content_type``."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self.slots: list[str] = []
        self.types: dict[str, str] = {}
        self.next = 0

    def __len__(self) -> int:
        return len(self.slots)

    def add(self, item_id: str, content_type: str) -> None:
        if item_id in self.types:
            self.types[item_id] = content_type
            return
        if len(self.slots) < self.capacity:
            self.slots.append(item_id)
        else:
            del self.types[self.slots[self.next]]
            self.slots[self.next] = item_id
            self.next = (self.next + 1) % self.capacity
        self.types[item_id] = content_type

    def add_many(self, item_ids: Sequence[str], content_types: Sequence[str]) -> None:
        """:meth:`add` each pair in order; when every item is known already, in one C-level pass."""
        if self.types.keys() >= set(item_ids):
            self.types.update(zip(item_ids, content_types, strict=True))
            return
        for item_id, content_type in zip(item_ids, content_types, strict=True):
            self.add(item_id, content_type)

    def items(self) -> list[str]:
        return list(self.slots)

    def sample(self, k: int, exclude: Container[str], rng: np.random.Generator,
               max_tries: int = 10) -> list[tuple[str, str]]:
        """Up to ``k`` distinct items not in ``exclude``, uniformly at random."""
        out: dict[str, str] = {}
        if not self.slots:
            return []
        for _ in range(max_tries):
            for slot in rng.integers(0, len(self.slots), 2 * k):
                item = self.slots[slot]
                if item not in exclude and item not in out:
                    out[item] = self.types[item]
                    if len(out) == k:
                        return sorted(out.items())
        return sorted(out.items())
