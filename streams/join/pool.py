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
>>> ids, types = pool.add_many(["c", "e"], ["news", "video"])
>>> sorted(pool.items()), pool.types["c"], ids[0] is pool.slots[pool.slots.index("c")]
(['c', 'd', 'e'], 'news', True)
"""

from __future__ import annotations

from collections.abc import Container, Sequence

import numpy as np


class CandidatePool:
    """Recency-bounded set of ``item_id -> content_type``; it also lends its own copy of each id
    and content type (:meth:`add_many`), so that many requests naming an item share one string."""

    def __init__(self, capacity: int = 100_000, max_names: int = 1024) -> None:
        self.capacity = capacity
        self.max_names = max_names
        self.slots: list[str] = []
        self.types: dict[str, str] = {}
        self.ids: dict[str, str] = {}  # item id -> the pool's copy of it
        self.names: dict[str, str] = {}  # content type -> the pool's copy of it (the first max_names seen)
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
            evicted = self.slots[self.next]
            del self.types[evicted], self.ids[evicted]
            self.slots[self.next] = item_id
            self.next = (self.next + 1) % self.capacity
        self.types[item_id] = content_type
        self.ids[item_id] = item_id

    def add_many(self, item_ids: Sequence[str], content_types: Sequence[str]) -> tuple[list[str], list[str]]:
        """:meth:`add` each pair in order (in C-level passes when every item is known already);
        returns the ids and content types as the pool's own copies."""
        names = self.names
        content_types = list(map(names.setdefault if len(names) < self.max_names else names.get, content_types,
                                 content_types))
        if all(map(self.types.__contains__, item_ids)):
            self.types.update(zip(item_ids, content_types, strict=True))
        else:
            for item_id, content_type in zip(item_ids, content_types, strict=True):
                self.add(item_id, content_type)
        return list(map(self.ids.get, item_ids, item_ids)), content_types

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
