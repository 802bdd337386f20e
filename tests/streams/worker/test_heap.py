"""The worker's heap returns what it frees (streams/worker/heap.py): a backlog's buffers leave no RSS behind."""

import platform
import subprocess
import sys

import pytest

# a fresh process: 50 buffers of 1 MiB freed (glibc's threshold rises to 1 MiB), then 300 more, each followed
# by a small object still held when the buffers are freed; prints the RSS growth (MB) left after
PROGRAM = """
import sys
from streams.worker.heap import return_freed_memory, trim

def rss_mb():
    return next(int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith("VmRSS:"))

assert return_freed_memory() if sys.argv[1] != "off" else True
warm = [bytearray(1 << 20) for _ in range(50)]
del warm
size = 1 << 20 if sys.argv[1] != "small" else 100_000  # small: below the thresholds, from the heap itself
base, held, buffers = rss_mb(), [], []
for _ in range(300):
    buffers.append(bytearray(size))
    held.append(bytearray(2000))
del buffers
if len(sys.argv) > 2:
    assert trim()
print(rss_mb() - base)
"""

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's malloc only")


def left_after(*mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROGRAM, *mode], capture_output=True, text=True, check=True)
    return float(out.stdout)


def test_freed_buffers_go_back_to_the_system():
    assert left_after("off") > 250  # glibc's default keeps them (the worker's RSS kept every backlog's peak)
    assert left_after("on") < 30  # only the small objects still held (0.6 MB) and allocator overhead remain


def test_trim_returns_the_free_pages_below_blocks_still_in_use():
    assert left_after("small") > 20  # 30 MB of 100 KB buffers, each under a small block still held: kept
    assert left_after("small", "trim") < 5  # malloc_trim gives their pages back without moving anything
