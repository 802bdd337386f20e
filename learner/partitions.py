"""Which partitions of ``hap.samples`` a data-parallel rank consumes: partition ``p`` goes to rank
``p mod N``, by manual assignment (no consumer group), so the assignment changes only when ``N``
does. Groups are keyed by ``request_id``: a replayed group lands in the partition, hence the rank,
that saw it first, and each rank's de-duplication by ``group_id`` stays exact. Offsets and seen ids
are kept per partition in the checkpoint, so after a restart, or a change of ``N``, any rank can take
any partition.

>>> owned([0, 1, 2, 3, 4], rank=1, world=2)
[1, 3]
>>> owned([0, 1, 2], rank=0, world=1)
[0, 1, 2]
"""

from __future__ import annotations

from collections.abc import Iterable


def owned(partitions: Iterable[int], rank: int, world: int) -> list[int]:
    """The partitions (sorted) that ``rank`` of ``world`` ranks consumes."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not one of {world} ranks")
    return sorted(p for p in partitions if p % world == rank)
