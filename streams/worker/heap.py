"""The worker process's heap: memory it frees goes back to the system, so its RSS follows what it holds.

glibc serves a large allocation (a fetched batch of records, a decompressed buffer, a RocksDB arena
block) by ``mmap`` only while it is above a threshold that rises to the largest block freed so far
(128 KiB at start, up to 32 MiB): after the first few megabyte-sized buffers, every later one comes
from the heap, and the heap shrinks only from its top. Buffers freed below a small object still in
use stay resident: the worker's RSS then kept the high-water mark of every backlog it worked off
(``bench/soak.py``: +60 MB while 12,000 events were caught up, none of it returned after).
:func:`return_freed_memory` fixes both thresholds at 128 KiB.

Below the threshold, a backlog's records, decoded events and batches are many small blocks; freed, they leave
whole free pages in the middle of the heap, under blocks still in use, which no threshold returns. glibc's
``malloc_trim`` returns those pages (``madvise``) without moving anything: :func:`trim_every` calls it from a
thread of its own every :data:`TRIM_EVERY_S`: a worker that worked off a 24,000-event backlog held 380 MB at most,
320 MB at its end and 223 MB 35 s after (``bench/streams.py``'s ``worker_rss_mb_*``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
import time

#: glibc's ``mallopt`` parameters (malloc.h) and the value both are fixed at
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 128 << 10
#: seconds between two calls of glibc's ``malloc_trim`` in :func:`trim_every`
TRIM_EVERY_S = 30.0


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def return_freed_memory() -> bool:
    """Have glibc map every allocation of :data:`THRESHOLD_BYTES` or more on its own (returned to the system
    when freed) and trim the heap's free top past that size, for the rest of the process; False where the C
    library is not glibc (nothing changed).

    >>> return_freed_memory() in (True, False)
    True
    """
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, THRESHOLD_BYTES))


def trim() -> bool:
    """Give the system back every whole free page of glibc's heaps (``malloc_trim(0)``), wherever it lies; True
    when some memory was returned, False when none was or the C library is not glibc. Threads that allocate wait
    for it on each heap's lock (milliseconds for a few hundred MB); the GIL is released meanwhile.

    >>> trim() in (True, False)
    True
    """
    malloc_trim = getattr(_libc(), "malloc_trim", None)
    return bool(malloc_trim(0)) if malloc_trim is not None else False


def trim_every(interval_s: float = TRIM_EVERY_S) -> threading.Thread | None:
    """Start a daemon thread that calls :func:`trim` every ``interval_s`` for the rest of the process, and return
    it; None (no thread) where the C library is not glibc.

    >>> thread = trim_every(3600.0)
    >>> thread is None or thread.daemon
    True
    """
    if getattr(_libc(), "malloc_trim", None) is None:
        return None

    def loop() -> None:
        while True:
            time.sleep(interval_s)
            trim()

    thread = threading.Thread(target=loop, name="heap-trim", daemon=True)
    thread.start()
    return thread
