"""`hap simulate`: synthetic cascade traffic or a replay of real data, to Kafka or files."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing
import queue
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deploy.logging_config import as_log_line
from deploy.progress import Progress
from deploy.settings import Settings
from streams.contract.schemas import ItemUpdate
from streams.kafka.producer import EventProducer, ProducerUnavailable
from streams.simulator.cascade import Request, router_preranker
from streams.simulator.replay import MindReplay
from streams.simulator.sink import EmitReport, FileWriter, Writer, emit, emit_items, log_time_shift_ms
from streams.simulator.world import CONTENT_TYPES, World

#: requests generated before the clock starts by default: the synthetic world takes 2-3 ms for one of
#: 500 candidates, a quarter of a second per 1,000 events/s of schedule, which is what held the
#: simulator near 1,000 events/s (`--rate 10000` holds its schedule with them generated first)
PREGENERATE = 2000


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate")
    p.add_argument("--requests", type=int, default=1000, help="requests to emit (replay: at most the log's)")
    p.add_argument("--rate", type=float, default=Settings.load().sim_rate,
                   help="events per second (0: as fast as possible)")
    p.add_argument("--seed", type=int, default=0, help="seed of the world, the replay's sampling and the duplicates")
    p.add_argument("--dataset", type=Path,
                   help="replay a MIND-layout dataset instead of the synthetic world (default: the synthetic world)")
    p.add_argument("--log-time", action="store_true",
                   help="with --dataset: stamp events with the log's own times, shifted by one constant (a whole "
                        "number of hours) so that the last request sent lies one minute to an hour before sending "
                        "starts; the rate paces the sending only, event-time windows close by the log's clock "
                        "(default: the wall clock, a log played at --rate)")
    p.add_argument("--duration", type=float,
                   help="stop starting requests after this many seconds (default: once --requests are sent)")
    p.add_argument("--candidates", type=int, default=1000, help="candidates per request")
    p.add_argument("--users", type=int, default=2000, help="users of the synthetic world")
    p.add_argument("--items", type=int, default=20000, help="items of the synthetic world")
    p.add_argument("--legacy-world", action="store_true",
                   help="the first synthetic world: two factors, no drift, no position bias")
    p.add_argument("--duplicate-rate", type=float, default=0.01,
                   help="fraction of events sent twice (the worker must de-duplicate them)")
    p.add_argument("--feedback-delay", type=float, default=2.0, help="mean feedback delay, seconds")
    p.add_argument("--router-url",
                   help="pre-rank through the live router at this URL, closing the loop (default: the world's own)")
    p.add_argument("--out", type=Path, help="write JSONL files into this directory instead of Kafka (default: Kafka)")
    p.add_argument("--truth", type=Path,
                   help="write ground truth (exposed items, labels) as JSONL to this file (default: none)")
    p.add_argument("--report", type=Path,
                   help="also write the emitted counts as JSON to this file (default: stdout only)")
    p.add_argument("--pregenerate", type=int, default=PREGENERATE,
                   help="at a rate, to Kafka: generate this many requests before the clock starts, so that "
                        "generating them does not hold the schedule back (about 100 KiB each at 500 candidates; "
                        "the rest are generated as they fall due; 0: none)")
    p.add_argument("--processes", type=int, default=1,
                   help="emitter processes sharing the schedule, each with its own producer (the synthetic world "
                        "to Kafka only): the requests are split by user, so they send what one process would")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines on stderr")


def build_source(args: argparse.Namespace, part: int = 0,
                 parts: int = 1) -> tuple[Iterator[Request], list[ItemUpdate], int, int | None, list[int] | None]:
    """The request stream, the item catalogue, the number of requests, with ``--log-time`` the shift of
    the log's times (:func:`streams.simulator.sink.log_time_shift_ms`), and the requests' places in the
    schedule (None: 0, 1, 2, ...). ``part`` of ``parts``: only the synthetic world's requests of the
    users ``u`` with ``u % parts == part`` (:meth:`World.user_of`), in their places."""
    if args.dataset:
        replay = MindReplay(args.dataset, seed=args.seed, n_candidates=args.candidates)
        items = [ItemUpdate(str(i), replay.content_type(str(i)), 0) for i in replay.pool]
        n = min(args.requests, len(replay))
        shift = log_time_shift_ms(replay.time_ms(n - 1)) if args.log_time and n else None
        return replay.requests(), items, n, shift, None
    if args.log_time:
        raise SystemExit("hap simulate: --log-time needs --dataset (the synthetic world has no clock of its own)")
    world = World(seed=args.seed, n_users=args.users, n_items=args.items,
                  feedback_delay_ms=1000 * args.feedback_delay, legacy=args.legacy_world)
    preranker = router_preranker(args.router_url) if args.router_url else None
    slots = [i for i in range(args.requests) if world.user_of(i) % parts == part] if parts > 1 else None
    indexes = range(args.requests) if slots is None else slots
    requests = (world.request(i, args.candidates, preranker) for i in indexes)
    items = [ItemUpdate(world.item_id(i), CONTENT_TYPES[t], 0) for i, t in enumerate(world.item_types)]
    return requests, items, len(indexes), None, slots


def run(args: argparse.Namespace) -> int:
    if args.processes > 1:
        return run_split(args)
    requests, items, n, shift, _ = build_source(args)
    writer: Writer
    if args.out:
        writer = FileWriter(args.out)
    else:
        settings = Settings.load()
        writer = EventProducer(settings.kafka_bootstrap, topic_prefix=settings.topic_prefix,
                               security=settings.kafka_security)
    report = EmitReport()
    try:
        emit_items(items, writer, report)
        progress = None if args.no_progress else Progress(n, "simulate", "requests")  # plain lines when not a tty
        sent = emit(requests, writer, rate=args.rate or None, n_requests=n, duplicate_rate=args.duplicate_rate,
                    seed=args.seed, truth_file=args.truth, realtime=args.out is None,
                    progress=progress.update if progress else None, duration_s=args.duration,
                    log_shift_ms=shift, pregenerate=args.pregenerate if args.rate and args.out is None else 0)
        if progress is not None:
            progress.close()
        writer.close()
    except ProducerUnavailable as exc:  # the broker went away for good: say so, exit 1
        print(as_log_line(f"hap simulate: {exc}", "hap.simulate", logging.ERROR), file=sys.stderr)
        return 1
    sent.items = report.items
    return _summary(args, sent)


def _summary(args: argparse.Namespace, sent: EmitReport) -> int:
    summary = dataclasses.asdict(sent)
    print(json.dumps(summary))
    if args.report:
        args.report.write_text(json.dumps(summary))
    return 0


def _producer() -> EventProducer:
    settings = Settings.load()
    return EventProducer(settings.kafka_bootstrap, topic_prefix=settings.topic_prefix, security=settings.kafka_security)


def _emitter(args: argparse.Namespace, part: int, barrier: Any, start_ms: Any, results: Any) -> None:
    """Emitter ``part`` of ``--processes``: its users' requests, pre-generated, then sent from the shared start."""
    requests, _, n, _, slots = build_source(args, part, args.processes)

    def start() -> float:
        barrier.wait()  # every emitter has pre-generated its requests; the last one set the start
        return start_ms.value

    truth = args.truth.with_name(f"{args.truth.name}.{part}") if args.truth else None
    try:
        writer = _producer()
        sent = emit(requests, writer, rate=args.rate or None, n_requests=n, duplicate_rate=args.duplicate_rate,
                    seed=args.seed + 7919 * part, truth_file=truth, duration_s=args.duration,
                    pregenerate=args.pregenerate if args.rate else 0, slots=slots, start=start)
        writer.close()
    except ProducerUnavailable as exc:
        barrier.abort()
        results.put((part, str(exc)))
        return
    results.put((part, dataclasses.asdict(sent)))


def run_split(args: argparse.Namespace) -> int:
    """``--processes N``: the catalogue from this process, then N emitter processes, one schedule."""
    if args.dataset or args.out:
        raise SystemExit("hap simulate: --processes splits the synthetic world's requests among producers to Kafka "
                         "(not a --dataset replay, not --out)")
    _, items, _, _, _ = build_source(args)
    report = EmitReport()
    try:
        writer = _producer()
        emit_items(items, writer, report)
        writer.close()
    except ProducerUnavailable as exc:
        print(as_log_line(f"hap simulate: {exc}", "hap.simulate", logging.ERROR), file=sys.stderr)
        return 1
    ctx = multiprocessing.get_context("fork")  # no producer (no I/O thread) is open here now
    start_ms = ctx.Value("d", 0.0)

    def set_start() -> None:  # run by the last emitter to be ready: all start 0.2 s from now
        start_ms.value = time.time() * 1000 + 200

    barrier, results = ctx.Barrier(args.processes, action=set_start), ctx.Queue()
    emitters = [ctx.Process(target=_emitter, args=(args, part, barrier, start_ms, results), daemon=True)
                for part in range(args.processes)]
    for emitter in emitters:
        emitter.start()
    reports: dict[int, Any] = {}
    while len(reports) < len(emitters):
        try:
            part, result = results.get(timeout=1.0)
        except queue.Empty:
            if any(e.exitcode not in (None, 0) for e in emitters):  # one died: the others wait on the barrier
                barrier.abort()
                print(as_log_line("hap simulate: an emitter process failed", "hap.simulate", logging.ERROR),
                      file=sys.stderr)
                return 1
            continue
        reports[part] = result
    for emitter in emitters:
        emitter.join()
    errors = [r for r in reports.values() if isinstance(r, str)]
    if errors:
        print(as_log_line(f"hap simulate: {errors[0]}", "hap.simulate", logging.ERROR), file=sys.stderr)
        return 1
    if args.truth:  # the parts' ground truth, in one file
        with args.truth.open("w") as out:
            for part in range(args.processes):
                piece = args.truth.with_name(f"{args.truth.name}.{part}")
                out.write(piece.read_text())
                piece.unlink()
    parts = list(reports.values())
    total = EmitReport(items=report.items, **{k: sum(r[k] for r in parts) for k in (
        "requests", "ranking", "exposure", "feedback", "duplicates", "pregenerated", "achieved_events_per_s")},
        **{k: max(r[k] for r in parts) for k in ("seconds", "max_late_ms", "pregenerate_s")})
    return _summary(args, total)
