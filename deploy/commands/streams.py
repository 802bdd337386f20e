"""`hap streams`: run Faust workers of one group (``--workers N`` here; start more with the same topic prefix
elsewhere to scale out)."""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from deploy.settings import Settings, env_name

    s = Settings.load()
    p = sub.add_parser("streams")
    p.add_argument("--window", type=float, default=s.join_window_s,
                   help="join window: seconds of event time after a request's last event")
    p.add_argument("--lateness", type=float, default=s.lateness_s,
                   help="allowed lateness: seconds the watermark must pass a request's window by before its group "
                        "is finalized")
    p.add_argument("--max-future", type=float, default=10.0,
                   help="seconds an event time may run ahead of its arrival; beyond, the event is dead-lettered "
                        "(reason_kind future)")
    p.add_argument("--align-partitions", action="store_true",
                   help="close each window by the slowest active input partition too (for a replay in log time, "
                        "which `hap replay --clock log` sets; off: by its own partition, as in production)")
    p.add_argument("--dwell-threshold", type=float, default=30.0, help="dwell seconds that count as positive")
    p.add_argument("--gn-per-exposed", type=int, default=2,
                   help="global negatives (pool items, never a candidate) sampled per exposed item")
    p.add_argument("--max-rn", type=int, default=10,
                   help="ranking negatives per group: unexposed candidates the ranker placed low")
    p.add_argument("--max-prn", type=int, default=10,
                   help="pre-ranking negatives per group: unexposed candidates the pre-ranker placed low (not rn)")
    p.add_argument("--no-corrections", action="store_true", help="dead-letter late feedback instead")
    p.add_argument("--metrics-port", type=int, default=s.streams_metrics_port,
                   help=f"worker n of --workers serves on this port + n (default: {env_name('streams_metrics_port')}, "
                        "%(default)s)")
    p.add_argument("--worker-id", default=s.worker_id,
                   help="this worker's name: its data dir and, with static membership, its name in the group")
    p.add_argument("--stall-timeout", type=float, default=s.streams_stall_s,
                   help="seconds without progress (x10 while tables recover) before the worker is replaced")
    p.add_argument("--workers", type=int, default=s.streams_workers,
                   help="worker processes of one group on this host, each supervised, named <worker-id>-<n>, with "
                        "metrics on <metrics-port>+n")
    p.add_argument("--worker-process", action="store_true", help=argparse.SUPPRESS)  # the supervised child
    # the supervisor's counts so far, passed to each worker it starts (see streams.worker.watchdog.supervise)
    p.add_argument("--restarts", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--exits", default="", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    """Supervise ``--workers`` worker processes (see :mod:`streams.worker.watchdog`); in each, run
    the worker."""
    if args.worker_process:
        return run_worker(args)
    from streams.worker.watchdog import supervise

    if args.workers < 1:
        print("hap streams: --workers must be at least 1", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "deploy.cli", *sys.argv[1:], "--worker-process"]
    if args.workers == 1:
        return supervise([command])
    return supervise([[*command, "--workers", "1", "--worker-id", f"{args.worker_id}-{n}",
                       "--metrics-port", str(args.metrics_port + n)] for n in range(args.workers)])


def run_worker(args: argparse.Namespace) -> int:
    from prometheus_client import start_http_server

    from deploy.logging_config import dict_config
    from deploy.settings import Settings
    from streams.join.assembler import AssemblerConfig
    from streams.kafka.topics import create_missing, pipeline_topics, resume_at_log_start, worker_topics
    from streams.worker.app import JOIN_INPUTS, StreamsConfig, StreamsWorker, count_deleted
    from streams.worker.heap import return_freed_memory, trim_every
    from streams.worker.log_filter import quiet_repeats
    from streams.worker.process import make_worker_class
    from streams.worker.tables import discard_stale
    from streams.worker.watchdog import parse_exits

    return_freed_memory()  # before start-up allocates: RSS follows what the worker holds, not its past peaks
    trim_every()  # and the free pages a backlog's small blocks leave behind go back too
    s = Settings.load()
    start_http_server(args.metrics_port, addr=s.metrics_host)
    cfg = StreamsConfig(
        bootstrap=s.kafka_bootstrap, redis=s.redis, redis_prefix=s.redis_prefix, kafka_security=s.kafka_security,
        topic_prefix=s.topic_prefix,
        partitions=s.kafka_partitions, replication_factor=s.kafka_replication.factor,
        data_dir=Path(s.data_dir) / f"streams-{args.worker_id}", corrections=not args.no_corrections,
        stall_s=args.stall_timeout, store=s.streams_store, max_future_ms=int(args.max_future * 1000),
        align_partitions=args.align_partitions,
        static_member=f"{s.topic_prefix}{args.worker_id}" if s.streams_static_membership else None,
        assembler=AssemblerConfig(
            window_ms=int(args.window * 1000), lateness_ms=int(args.lateness * 1000),
            dwell_threshold_ms=int(args.dwell_threshold * 1000), max_rn=args.max_rn, max_prn=args.max_prn,
            gn_per_exposed=args.gn_per_exposed,
        ),
    )
    app = StreamsWorker(cfg, restarts=args.restarts, exits=parse_exits(args.exits)).app
    # every topic the worker uses, changelogs included, replicated as the settings say (Faust creates none)
    create_missing(cfg.bootstrap, {**pipeline_topics(cfg.topic_prefix, cfg.partitions, s.kafka_replication),
                                   **worker_topics(app.conf.id, list(app.tables), cfg.partitions,
                                                   s.kafka_replication)}, cfg.kafka_security)
    discard_stale(app.tables.values(), cfg.bootstrap, cfg.kafka_security)  # a new Kafka under an old data dir
    # before the group's consumer starts: offsets retention deleted are counted, never an offset-out-of-range reset
    count_deleted(resume_at_log_start(cfg.bootstrap, app.conf.id, [f"{cfg.topic_prefix}{t}" for t in JOIN_INPUTS],
                                      cfg.kafka_security))
    quiet_repeats()
    gc.collect()
    gc.freeze()  # start-up's objects are never traversed again: a full collection took 0.13 s, now 0.01-0.03 s
    _Worker = make_worker_class()
    sys.argv = [sys.argv[0], "worker"]
    # Faust replaces the process's logging when the worker starts: with the same level and format as every command
    _Worker(app, loglevel=s.log_level, logging_config=dict_config(s.log_level, s.log_format),
            quiet=True).execute_from_commandline()
    return 0
