"""The worker process's heap: memory it frees goes back to the system, so its RSS follows what it holds.

glibc serves a large allocation (a fetched batch of records, a decompressed buffer, a RocksDB arena
block) by ``mmap`` only while it is above a threshold that rises to the largest block freed so far
(128 KiB at start, up to 32 MiB): after the first few megabyte-sized buffers, every later one comes
from the heap, and the heap shrinks only from its top. Buffers freed below a small object still in
use stay resident: the worker's RSS then kept the high-water mark of every backlog it worked off
(``bench/soak.py``: +60 MB while 12,000 events were caught up, none of it returned after).
:func:`return_freed_memory` fixes both thresholds at 128 KiB.
"""

from __future__ import annotations

import ctypes
import ctypes.util

#: glibc's ``mallopt`` parameters (malloc.h) and the value both are fixed at
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 128 << 10


def return_freed_memory() -> bool:
    """Have glibc map every allocation of :data:`THRESHOLD_BYTES` or more on its own (returned to the system
    when freed) and trim the heap's free top past that size, for the rest of the process; False where the C
    library is not glibc (nothing changed).

    >>> return_freed_memory() in (True, False)
    True
    """
    name = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, THRESHOLD_BYTES))
