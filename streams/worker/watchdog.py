"""Crash-only recovery for a wedged streams worker: a watchdog inside it, a supervisor around it.

A worker whose Kafka client gets stuck consumes nothing while looking alive (seen right after
start-up, before its internal topics were created up front: see :mod:`streams.kafka.topics`). Every
batch of messages the worker's agent handles, its own ticks included (one per partition per
``tick_s``), beats the :class:`Watchdog`; when no beat came for ``stall_s`` (ten times that
while the tables recover, when the agent legitimately waits) the worker exits with
:data:`STALLED_EXIT`, and :func:`supervise` (what `hap streams` runs) starts a fresh one, as it
does after any other exit (a crash, a kill), with exponential backoff; it supervises several
workers of one group at once the same way (``hap streams --workers N``).
Exiting at once is safe: offsets are committed only after processing and the pending
requests live in changelog-backed tables, exactly as after a SIGKILL.

Examples
--------
>>> dog = Watchdog(stall_s=60)
>>> dog.beat(); dog.stalled()
False
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Sequence

STALLED_EXIT = 3
RECOVERY_GRACE = 10.0  # while the tables recover from their changelogs, a stall counts after 10 x stall_s
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


EXIT_REASONS = ("stalled", "crashed", "killed", "exited")


def exit_reason(code: int) -> str:
    """Why a worker ended, from its exit code: one of :data:`EXIT_REASONS`.

    >>> [exit_reason(c) for c in (STALLED_EXIT, 1, -9, 0)]
    ['stalled', 'crashed', 'killed', 'exited']
    """
    if code == STALLED_EXIT:
        return "stalled"
    if code < 0:
        return "killed"
    return "crashed" if code else "exited"


def format_exits(exits: dict[str, int]) -> str:
    """``stalled=1,crashed=2``: the exits so far, as passed to the next worker (``--exits``)."""
    return ",".join(f"{reason}={n}" for reason, n in exits.items() if n)


def parse_exits(text: str) -> dict[str, int]:
    """The inverse of :func:`format_exits` (unknown reasons are ignored).

    >>> parse_exits(format_exits({"stalled": 1, "crashed": 2}))
    {'stalled': 1, 'crashed': 2}
    """
    pairs = (part.split("=", 1) for part in text.split(",") if "=" in part)
    return {reason: int(n) for reason, n in pairs if reason in EXIT_REASONS and n.isdigit()}


@dataclasses.dataclass(frozen=True, slots=True)
class RestartPolicy:
    """Exponential backoff between restarts: ``initial_s``, doubled after each quick exit up to
    ``max_s``; a worker that ran ``healthy_s`` or longer resets it.

    >>> p = RestartPolicy(initial_s=1, max_s=8, healthy_s=60)
    >>> [p.delay(n) for n in range(1, 6)]
    [1.0, 2.0, 4.0, 8.0, 8.0]
    """

    initial_s: float = 1.0
    max_s: float = 30.0
    healthy_s: float = 60.0

    def delay(self, quick_exits: int) -> float:
        """The wait before the next start after ``quick_exits`` (>= 1) exits in a row that came early."""
        return float(min(self.max_s, self.initial_s * 2 ** max(quick_exits - 1, 0)))


def supervise(cmds: Sequence[Sequence[str]], policy: RestartPolicy = RestartPolicy()) -> int:
    """Run each command of ``cmds`` (one worker each, all at once) and start a fresh one whenever it
    exits, for any reason, with backoff; returns the first worker's last exit code once stopped.

    SIGTERM and SIGINT are passed on to every worker and end the supervision. Each exit is logged
    with its reason and the worker's running count; its next process gets the count as
    ``--restarts N`` and the exits by reason as ``--exits`` (:func:`format_exits`), appended to its
    command, and exports them (``hap_streams_worker_restarts_total``, ``hap_streams_worker_exits_total{reason}``).
    """
    stopping = threading.Event()
    children: list[subprocess.Popen[bytes] | None] = [None] * len(cmds)
    codes = [0] * len(cmds)

    def stop(signum: int, _frame: object) -> None:
        stopping.set()
        for child in children:
            if child is not None and child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threads = [threading.Thread(target=_keep_running, args=(n, list(cmd), policy, stopping, children, codes),
                                name=f"supervise-{n}", daemon=True) for n, cmd in enumerate(cmds)]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():  # joined in steps: the main thread must stay free to take the signals
            thread.join(0.2)
    return codes[0]


def _keep_running(n: int, cmd: list[str], policy: RestartPolicy, stopping: threading.Event,
                  children: list[subprocess.Popen[bytes] | None], codes: list[int]) -> None:
    """Worker ``n``'s restart loop (see :func:`supervise`)."""
    name = "the streams worker" if len(children) == 1 else f"streams worker {n}"
    exits = dict.fromkeys(EXIT_REASONS, 0)
    restarts = quick = 0
    while not stopping.is_set():
        started = time.monotonic()
        child = children[n] = subprocess.Popen([*cmd, "--restarts", str(restarts), "--exits", format_exits(exits)])
        if stopping.is_set():  # the signal came while it started
            child.terminate()
        code = codes[n] = child.wait()
        if stopping.is_set():
            return
        ran_s = time.monotonic() - started
        reason = exit_reason(code)
        exits[reason] += 1
        restarts += 1
        quick = 1 if ran_s >= policy.healthy_s else quick + 1
        delay = policy.delay(quick)
        log.error("%s exited (%s, code %d) after %.1fs; restart %d (%s) in %.1fs",
                  name, reason, code, ran_s, restarts, format_exits(exits), delay)
        stopping.wait(delay)
