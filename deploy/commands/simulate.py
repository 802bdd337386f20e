"""`hap simulate`: synthetic cascade traffic or a replay of real data, to Kafka or files."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

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
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines on stderr")


def build_source(args: argparse.Namespace) -> tuple[Iterator[Request], list[ItemUpdate], int, int | None]:
    """The request stream, the item catalogue, the number of requests and, with ``--log-time``,
    the shift of the log's times (:func:`streams.simulator.sink.log_time_shift_ms`)."""
    if args.dataset:
        replay = MindReplay(args.dataset, seed=args.seed, n_candidates=args.candidates)
        items = [ItemUpdate(str(i), replay.content_type(str(i)), 0) for i in replay.pool]
        n = min(args.requests, len(replay))
        shift = log_time_shift_ms(replay.time_ms(n - 1)) if args.log_time and n else None
        return replay.requests(), items, n, shift
    if args.log_time:
        raise SystemExit("hap simulate: --log-time needs --dataset (the synthetic world has no clock of its own)")
    world = World(seed=args.seed, n_users=args.users, n_items=args.items,
                  feedback_delay_ms=1000 * args.feedback_delay, legacy=args.legacy_world)
    preranker = router_preranker(args.router_url) if args.router_url else None
    requests = (world.request(i, args.candidates, preranker) for i in range(args.requests))
    items = [ItemUpdate(world.item_id(i), CONTENT_TYPES[t], 0) for i, t in enumerate(world.item_types)]
    return requests, items, args.requests, None


def run(args: argparse.Namespace) -> int:
    requests, items, n, shift = build_source(args)
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
    summary = dataclasses.asdict(sent)
    print(json.dumps(summary))
    if args.report:
        args.report.write_text(json.dumps(summary))
    return 0
