"""Where a pre-ranking request's time goes: its stages, and what else the process did meanwhile.

A :class:`RequestTiming` starts once the body is read and is marked at the end of each stage
(``decode``, ``features``, ``tiers``, ``rank``, ``encode``). Each stage's seconds go to
``hap_router_stage_seconds{stage}``; with ``hap router --server-timing`` the answer also names
them in a ``Server-Timing`` header (W3C Server Timing, milliseconds): each stage's wall time, then
its CPU (``decode-cpu``, ...), and over the request's span ``cpu`` (the request thread's CPU),
``others`` (the CPU of the process's other threads: the feature refresh, the version swap) and
``gc`` (the cycle collector's time, :data:`GC`): a slow request whose ``cpu`` is low waited for
the GIL or for a core, and ``others`` says whether a background thread held the GIL meanwhile.
Timing a request costs 15-30 us (most of it the five histogram observations), under 1% of a
2,000-candidate request.

>>> timing = RequestTiming()
>>> for stage in STAGES:
...     timing.mark(stage)
>>> [entry.split(";")[0] for entry in timing.header().split(", ")][4:]
['encode', 'decode-cpu', 'features-cpu', 'tiers-cpu', 'rank-cpu', 'encode-cpu', 'cpu', 'others', 'gc', 'total']
"""

from __future__ import annotations

import gc
import time

from router import metrics

#: the stages of a request, in order: the body's decode, the feature lookup (item rows, the user, the
#: user-by-item columns), both tiers (item vectors included), the top k and the answer's fields, its JSON
STAGES = ("decode", "features", "tiers", "rank", "encode")
_STAGE_SECONDS = {stage: metrics.STAGE_SECONDS.labels(stage) for stage in STAGES}


class GcClock:
    """The seconds the cycle collector has run in this process, and its collections, once installed
    (a ``gc.callbacks`` entry: nothing runs between collections)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._started = 0.0
        self._users = 0  # apps running with it (several in one process in tests)

    def __call__(self, phase: str, _info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections += 1

    def install(self) -> None:
        """Start timing collections (once per app that runs; the first installs the callback)."""
        self._users += 1
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        """Stop, once every app that installed it has (the last removes the callback)."""
        self._users = max(0, self._users - 1)
        if not self._users and self in gc.callbacks:
            gc.callbacks.remove(self)


#: the process's collector clock (installed by the router app while it runs)
GC = GcClock()


class RequestTiming:
    """One request's stage timings (from its creation) and CPU clocks."""

    __slots__ = ("started", "last", "cpu", "last_cpu", "process", "gc", "stages", "stages_cpu")

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.cpu = self.last_cpu = time.thread_time()
        self.process = time.process_time()
        self.gc = GC.seconds
        self.stages: dict[str, float] = {}
        self.stages_cpu: dict[str, float] = {}

    def mark(self, stage: str) -> None:
        """End ``stage`` now (it began at the previous mark) and observe it in the stage metric."""
        now, cpu = time.perf_counter(), time.thread_time()
        self.stages[stage] = seconds = now - self.last
        self.stages_cpu[stage + "-cpu"] = cpu - self.last_cpu
        self.last, self.last_cpu = now, cpu
        _STAGE_SECONDS[stage].observe(seconds)

    def header(self) -> str:
        """The ``Server-Timing`` value of the span so far, in milliseconds: each stage's wall time, then
        its CPU (``decode-cpu``, ...), the request thread's, the other threads', the collector's, the total."""
        cpu = time.thread_time() - self.cpu
        spans = {**self.stages, **self.stages_cpu, "cpu": cpu,
                 "others": max(0.0, time.process_time() - self.process - cpu), "gc": GC.seconds - self.gc,
                 "total": time.perf_counter() - self.started}
        return ", ".join(f"{name};dur={1000 * seconds:.3f}" for name, seconds in spans.items())


def parse_server_timing(value: str) -> dict[str, float]:
    """``{name: milliseconds}`` of a ``Server-Timing`` header (what the bench reads back).

    >>> parse_server_timing("decode;dur=0.512, cpu;dur=1.5")
    {'decode': 0.512, 'cpu': 1.5}
    """
    out = {}
    for entry in value.split(","):
        name, _, params = entry.strip().partition(";")
        for param in params.split(";"):
            key, _, number = param.partition("=")
            if key.strip() == "dur":
                out[name] = float(number)
    return out
