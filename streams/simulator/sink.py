"""Emit simulated requests as timed events, to Kafka at a target rate or to JSONL files.

Events are emitted in timestamp order from a heap: a request's ranking event at its time,
exposures shortly after, feedback seconds later (so feedback of one request interleaves with
later requests: out of order across requests). A small rate of events is sent twice (the
duplicates producers really emit). With Kafka, timestamps are wall-clock milliseconds and
the emitter sleeps to hold the rate; as fast as possible, it still never sends an event before
its own time (a producer refuses one further ahead than ``max_future``). With files, time is
simulated and nothing sleeps.

In *log time* (``log_shift_ms`` given: a replayed log whose requests carry their own times), each
event is stamped with its request's log time plus ``log_shift_ms`` plus its offset, so the
events keep the log's spacing (a week stays a week of event time) while the rate paces only how
fast they are sent; the caller picks the shift so that the log ends before sending starts
(:func:`log_time_shift_ms`): every event is in the past, and a consumer's event-time windows close by
the log's own clock.
"""

from __future__ import annotations

import dataclasses
import gc
import heapq
import itertools
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Protocol

import numpy as np

from feature_store.item_stats import WINDOWS
from streams.contract.schemas import ExposureEvent, ItemUpdate, RankingEvent, encode, with_ts
from streams.kafka.producer import encode_checked
from streams.simulator.cascade import Request


@dataclasses.dataclass(frozen=True, slots=True)
class _Stamped:
    """A pre-generated ranking event and its wire bytes at ``ts_ms=0``, checked by the producer SDK before the
    clock started (:func:`streams.contract.schemas.with_ts` sets its time as it goes out)."""

    event: RankingEvent
    template: bytes


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
    #: a consumer's event-time windows close that much later (0 otherwise, and in log time)
    max_late_ms: float = 0.0
    #: in log time: the constant added to the log's own times (ms); None when events carry the wall clock
    log_shift_ms: int | None = None
    #: requests generated before the clock started (``pregenerate``), and the seconds that took
    pregenerated: int = 0
    pregenerate_s: float = 0.0
    #: the rate the emitter held: requests started per second, from the first request's start to the last's,
    #: times the events per request sent (0 for a single request); at a rate it kept, the rate asked for
    achieved_events_per_s: float = 0.0


#: in log time, how long before sending starts the last request sent is stamped: its exposures and
#: feedback (seconds after it) are in the past too
LOG_END_MARGIN_MS = 60_000
#: a log-time shift is a multiple of this: every bucket length of the item statistics divides it
BUCKET_ALIGN_MS = max(length for _, length, _ in WINDOWS.values())


def log_time_shift_ms(last_log_ms: int, now_ms: int | None = None, margin_ms: int = LOG_END_MARGIN_MS) -> int:
    """The shift that stamps a log whose last request is at ``last_log_ms`` so that it ends at
    least ``margin_ms`` (and less than an hour more) before ``now_ms`` (default: the wall clock):
    a whole number of the item statistics' longest bucket (an hour), so that every bucket holds
    the events it holds in the log's own time and the windows read as of a request are those of
    an as-of replay of the unshifted log (``feature_store.asof``).

    >>> log_time_shift_ms(1_000_000, now_ms=5 * 3_600_000)
    14400000
    """
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return (now - margin_ms - last_log_ms) // BUCKET_ALIGN_MS * BUCKET_ALIGN_MS


def emit(requests: Iterable[Request], writer: Writer, *, rate: float | None, n_requests: int,
         events_per_request: float = 12.0, duplicate_rate: float = 0.0, seed: int = 0,
         truth_file: Path | None = None, realtime: bool = True, progress: Callable[[str], None] | None = None,
         duration_s: float | None = None, log_shift_ms: int | None = None, pregenerate: int = 0,
         slots: Iterable[int] | None = None, start: Callable[[], float] | None = None) -> EmitReport:
    """Emit ``requests`` (at most ``n_requests``) through ``writer``; returns the counts sent.

    ``rate`` is events per second (None: as fast as possible). ``duration_s`` stops starting
    new requests after that many seconds. ``progress`` is called once per request emitted.
    ``log_shift_ms``: stamp each request at its own time plus this (log time, see the module);
    requests must then come in time order. In real time an event is still never sent ahead of
    the clock (the emitter waits for it). ``pregenerate``: take the first that many requests from
    ``requests`` before the clock starts, so that generating them (milliseconds each for the
    synthetic world) does not count against the schedule; the rest are generated as they are due.

    Several emitters can share one schedule (:func:`streams.simulator.world.World.user_of` splits the
    requests): ``slots`` gives each request's place in it (default 0, 1, 2, ...: request ``i`` is due
    ``i * events_per_request / rate`` seconds after the start) and ``start``, called once the
    requests are pre-generated, the wall time (ms) at which the schedule starts (it may wait for the
    other emitters; default: now).
    """
    rng = np.random.default_rng(seed + 7)
    started = time.monotonic()
    requests = iter(requests)
    ahead = list(itertools.islice(requests, min(pregenerate, n_requests)))
    # a producer's pre-generated ranking events are checked and encoded now, each once (hundreds of µs at 500
    # candidates); sent, they carry their time (never ahead of the clock, never negative: what the check adds)
    raw = realtime and hasattr(writer, "send_raw")
    templates = [encode_checked(dataclasses.replace(r.ranking, ts_ms=0)) if raw else None for r in ahead]
    paired = itertools.chain(zip(ahead, templates, strict=True), ((r, None) for r in requests))

    def now_ms() -> float:
        """The wall clock in event time: on the schedule at a rate, the clock itself as fast as possible."""
        return start_ms + (time.monotonic() - clock) * 1000 if rate else time.time() * 1000

    report = EmitReport(log_shift_ms=log_shift_ms, pregenerated=len(ahead),
                        pregenerate_s=round(time.monotonic() - started, 3))
    if ahead:  # made to live until sent: the cycle collector's full passes leave them alone while on the clock
        gc.collect()
        gc.freeze()
    heap: list[tuple[int, int, object]] = []
    seq = 0
    start_ms = (int(start()) if start else int(time.time() * 1000)) if realtime else 0
    spacing_ms = 1000.0 * events_per_request / rate if rate else 0.0
    truth = truth_file.open("w") if truth_file else None
    if realtime and (wait_s := start_ms / 1000 - time.time()) > 0:
        time.sleep(wait_s)
    clock = time.monotonic() + (start_ms / 1000 - time.time() if realtime else 0.0)  # start_ms on the monotonic clock

    def flush_until(now_ms: float) -> None:
        while heap and heap[0][0] <= now_ms:
            ts, _, event = heapq.heappop(heap)
            _send(writer, event, report)
            if realtime and log_shift_ms is not None:
                wait = (ts - time.time() * 1000) / 1000
                if wait > 0:  # a shift that leaves the log's end in the future: never ahead of the clock
                    time.sleep(wait)
            elif realtime and rate:
                report.max_late_ms = max(report.max_late_ms, start_ms + (time.monotonic() - clock) * 1000 - ts)
            if rng.random() < duplicate_rate:
                _send(writer, event, report)
                report.duplicates += 1

    for index, (request, template) in zip(range(n_requests) if slots is None else slots, paired, strict=False):
        t_ms = start_ms + int(index * spacing_ms)
        if realtime and rate:
            now = start_ms + (time.monotonic() - clock) * 1000
            if t_ms > now:
                if log_shift_ms is None:  # in log time what is due goes out by the log's times (below)
                    flush_until(t_ms)
                time.sleep(max(0.0, (t_ms - (start_ms + (time.monotonic() - clock) * 1000)) / 1000))
        if duration_s is not None and time.monotonic() - clock > duration_s:
            break
        if realtime and not rate:
            t_ms = int(time.time() * 1000)
        if log_shift_ms is not None:
            t_ms = request.ranking.ts_ms + log_shift_ms
        seq += 1
        ranking = dataclasses.replace(request.ranking, ts_ms=t_ms)
        heapq.heappush(heap, (t_ms, seq, ranking if template is None else _Stamped(ranking, template)))
        for offset, event in request.events:
            seq += 1
            heapq.heappush(heap, (t_ms + offset, seq, dataclasses.replace(event, ts_ms=t_ms + offset)))
        if truth:
            truth.write(json.dumps({"request_id": request.ranking.request_id, "exposed": request.exposed}) + "\n")
        report.requests += 1
        last_start = time.monotonic()
        if report.requests == 1:
            first_start = last_start
        # in real time, what is due (never an event ahead of the clock: a producer refuses those); in
        # log time, what comes before this request in the log
        if log_shift_ms is not None:
            flush_until(t_ms)
        else:
            flush_until((t_ms if rate else now_ms()) if realtime else float("-inf"))
        if progress is not None:
            progress(f"{report.ranking + report.exposure + report.feedback} events")
    while heap:
        if realtime and log_shift_ms is None:  # as fast as possible too: the last feedback comes seconds later
            wait = (heap[0][0] - now_ms()) / 1000
            if wait > 0:
                time.sleep(wait)
        flush_until(heap[0][0])
    if truth:
        truth.close()
    report.seconds = time.monotonic() - clock
    if report.requests > 1 and last_start > first_start:
        events = report.ranking + report.exposure + report.feedback - report.duplicates
        report.achieved_events_per_s = round(events / report.requests * (report.requests - 1)
                                             / (last_start - first_start), 1)
    if ahead:
        gc.unfreeze()
    return report


def _send(writer: Writer, event: object, report: EmitReport) -> None:
    if type(event) is _Stamped:
        writer.send_raw("ranking", event.event.request_id, with_ts(event.template, event.event.ts_ms))  # type: ignore[attr-defined]
        report.ranking += 1
    elif isinstance(event, RankingEvent):
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
