"""Crash-only recovery for a wedged streams worker: a watchdog inside it, a supervisor around it.

A worker whose Kafka client gets stuck consumes nothing while looking alive (seen right after
start-up, before its internal topics were created up front: see :mod:`streams.topics`). Every
message the worker's agent handles, its own ticks included (one per partition per
``tick_s``), beats the :class:`Watchdog`; when no beat came for ``stall_s`` (ten times that
while the tables recover, when the agent legitimately waits) the worker exits with
:data:`STALLED_EXIT`, and :func:`supervise` (what `hap streams` runs) starts a fresh one.
Exiting at once is safe: offsets are committed only after processing and the pending
requests live in changelog-backed tables, exactly as after a SIGKILL.

Examples
--------
>>> dog = Watchdog(stall_s=60)
>>> dog.beat(); dog.stalled()
False
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time

STALLED_EXIT = 3
RECOVERY_GRACE = 10.0  # while the tables recover from their changelogs, a stall counts after 10 x stall_s
RESTARTS_ENV = "HAP_STREAMS_RESTARTS"
log = logging.getLogger("hap.streams")


class Watchdog:
    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self.last = time.monotonic()

    def beat(self) -> None:
        """Progress was made."""
        self.last = time.monotonic()

    def stalled(self, factor: float = 1.0) -> bool:
        """No progress for longer than ``factor`` × ``stall_s``."""
        return time.monotonic() - self.last > factor * self.stall_s


def supervise(cmd: list[str], restart_delay_s: float = 1.0) -> int:
    """Run ``cmd`` (one worker) until it exits other than stalled; returns its exit code.

    SIGTERM and SIGINT are passed on to the worker and end the supervision; a stalled worker
    is replaced after ``restart_delay_s``, with the restart count in ``HAP_STREAMS_RESTARTS``.
    """
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    restarts = 0
    while True:
        child = subprocess.Popen(cmd, env={**os.environ, RESTARTS_ENV: str(restarts)})
        code = child.wait()
        if stopping or code != STALLED_EXIT:
            return code
        restarts += 1
        log.error("the streams worker made no progress and exited; starting a fresh one (restart %d)", restarts)
        time.sleep(restart_delay_s)
