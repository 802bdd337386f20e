"""Emit simulated requests as timed events, to Kafka at a target rate or to JSONL files.

Events are emitted in timestamp order from a heap: a request's ranking event at its time,
exposures shortly after, feedback seconds later (so feedback of one request interleaves with
later requests: out of order across requests). A small rate of events is sent twice (the
duplicates producers really emit). With Kafka, timestamps are wall-clock milliseconds and
the emitter sleeps to hold the rate; as fast as possible, it still never sends an event before
its own time (a producer refuses one further ahead than ``max_future``). With files, time is
simulated and nothing sleeps.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Protocol

import numpy as np

from streams.contract.schemas import ExposureEvent, ItemUpdate, RankingEvent, encode
from streams.simulator.cascade import Request


class Writer(Protocol):
    def send_ranking(self, event: RankingEvent) -> None: ...
    def send_exposure(self, event: ExposureEvent) -> None: ...
    def send_item(self, update: ItemUpdate) -> None: ...
    def close(self) -> None: ...


class FileWriter:
    """JSONL files ``ranking.jsonl``, ``exposure.jsonl``, ``items.jsonl`` under ``directory``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, IO[bytes]] = {
            t: (directory / f"{t}.jsonl").open("wb") for t in ("ranking", "exposure", "items")
        }

    def send_ranking(self, event: RankingEvent) -> None:
        self.files["ranking"].write(encode(event) + b"\n")

    def send_exposure(self, event: ExposureEvent) -> None:
        self.files["exposure"].write(encode(event) + b"\n")

    def send_item(self, update: ItemUpdate) -> None:
        self.files["items"].write(encode(update) + b"\n")

    def close(self) -> None:
        for f in self.files.values():
            f.close()


@dataclasses.dataclass
class EmitReport:
    requests: int = 0
    ranking: int = 0
    exposure: int = 0
    feedback: int = 0
    items: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    #: in real time at a rate: the most an event was sent after its own event time (ms), i.e. how far
    #: the emitter fell behind its schedule; event times then trail the wall clock by as much, and
    #: a consumer's event-time windows close that much later (0 otherwise)
    max_late_ms: float = 0.0


def emit(requests: Iterable[Request], writer: Writer, *, rate: float | None, n_requests: int,
         events_per_request: float = 12.0, duplicate_rate: float = 0.0, seed: int = 0,
         truth_file: Path | None = None, realtime: bool = True, progress: Callable[[str], None] | None = None,
         duration_s: float | None = None) -> EmitReport:
    """Emit ``requests`` (at most ``n_requests``) through ``writer``; returns the counts sent.

    ``rate`` is events per second (None: as fast as possible). ``duration_s`` stops starting
    new requests after that many seconds. ``progress`` is called once per request emitted.
    """
    rng = np.random.default_rng(seed + 7)

    def now_ms() -> float:
        """The wall clock in event time: on the schedule at a rate, the clock itself as fast as possible."""
        return start_ms + (time.monotonic() - clock) * 1000 if rate else time.time() * 1000

    report = EmitReport()
    heap: list[tuple[int, int, object]] = []
    seq = 0
    start_ms = int(time.time() * 1000) if realtime else 0
    spacing_ms = 1000.0 * events_per_request / rate if rate else 0.0
    truth = truth_file.open("w") if truth_file else None
    clock = time.monotonic()

    def flush_until(now_ms: float) -> None:
        while heap and heap[0][0] <= now_ms:
            ts, _, event = heapq.heappop(heap)
            _send(writer, event, report)
            if realtime and rate:
                report.max_late_ms = max(report.max_late_ms, start_ms + (time.monotonic() - clock) * 1000 - ts)
            if rng.random() < duplicate_rate:
                _send(writer, event, report)
                report.duplicates += 1

    for index, request in zip(range(n_requests), requests, strict=False):
        t_ms = start_ms + int(index * spacing_ms)
        if realtime and rate:
            now = start_ms + (time.monotonic() - clock) * 1000
            if t_ms > now:
                flush_until(t_ms)
                time.sleep(max(0.0, (t_ms - (start_ms + (time.monotonic() - clock) * 1000)) / 1000))
        if duration_s is not None and time.monotonic() - clock > duration_s:
            break
        if realtime and not rate:
            t_ms = int(time.time() * 1000)
        seq += 1
        heapq.heappush(heap, (t_ms, seq, dataclasses.replace(request.ranking, ts_ms=t_ms)))
        for offset, event in request.events:
            seq += 1
            heapq.heappush(heap, (t_ms + offset, seq, dataclasses.replace(event, ts_ms=t_ms + offset)))
        if truth:
            truth.write(json.dumps({"request_id": request.ranking.request_id, "exposed": request.exposed}) + "\n")
        report.requests += 1
        # in real time, what is due (never an event ahead of the clock: a producer refuses those)
        flush_until((t_ms if rate else now_ms()) if realtime else float("-inf"))
        if progress is not None:
            progress(f"{report.ranking + report.exposure + report.feedback} events")
    while heap:
        if realtime:  # as fast as possible too: the last feedback comes seconds after its request
            wait = (heap[0][0] - now_ms()) / 1000
            if wait > 0:
                time.sleep(wait)
        flush_until(heap[0][0])
    if truth:
        truth.close()
    report.seconds = time.monotonic() - clock
    return report


def _send(writer: Writer, event: object, report: EmitReport) -> None:
    if isinstance(event, RankingEvent):
        writer.send_ranking(event)
        report.ranking += 1
    else:
        assert isinstance(event, ExposureEvent)
        writer.send_exposure(event)
        if event.type == "feedback":
            report.feedback += 1
        else:
            report.exposure += 1


def emit_items(updates: Iterable[ItemUpdate], writer: Writer, report: EmitReport) -> None:
    """Send the catalogue (``hap.items``) before the traffic."""
    for update in updates:
        writer.send_item(update)
        report.items += 1
