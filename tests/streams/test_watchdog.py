"""The watchdog notices a stall; the supervisor replaces a stalled worker and nothing else."""

import sys
import time

from streams.watchdog import STALLED_EXIT, Watchdog, supervise

STALLS_ONCE = f"import os, sys; sys.exit({STALLED_EXIT} if os.environ['HAP_STREAMS_RESTARTS'] == '0' else 7)"


def test_watchdog_stalls_without_beats():
    dog = Watchdog(stall_s=0.05)
    assert not dog.stalled()
    time.sleep(0.1)
    assert dog.stalled()
    dog.beat()
    assert not dog.stalled()


def test_supervisor_replaces_a_stalled_worker_then_passes_on_its_exit_code():
    assert supervise([sys.executable, "-c", STALLS_ONCE], restart_delay_s=0) == 7
