"""Recovery of a SIGKILLed streams worker, both ways in one run: restarted on an empty state directory (a new
pod: every table rebuilt from its changelog) and on its own (a restarted pod: its RocksDB state, and only the
changelog records past it).

One worker process (``hap streams --worker-process``, a static group member, as in ``deploy/k8s``) joins events
that `hap simulate` produces at ``--rate`` on fresh topics of the stack's Kafka. After ``--warmup`` seconds it is
SIGKILLed and started again on a new, empty data dir; ``--between`` seconds later it is SIGKILLed again and
started on that same dir (so the second restart faces the larger changelog). For each restart: the seconds
from the kill until the new process emits a group, until its metrics answer, and the changelog records it
replayed (``hap_streams_changelog_recovered_records_total``), against the records the changelogs held. At the
end: every request of the simulator's ground truth has its group (nothing lost), and no request has two
different first groups (nothing trained twice: the learner keeps one copy of a ``group_id``).

    python bench/recovery.py [--rate 500] [--warmup 90] [--between 90]   # needs a stack: `hap stack up`

Ends with one JSON line {"empty_dir": {...}, "own_dir": {...}, "requests", "lost", "trained_twice", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.pipeline import Component  # noqa: E402
from deploy.scrape import scrape  # noqa: E402
from deploy.settings import Settings, settings_env  # noqa: E402
from deploy.stack.process import free_port  # noqa: E402
from streams.contract.schemas import decode_sample_group  # noqa: E402
from streams.kafka.topics import ensure_topics  # noqa: E402

TABLES = ("pending", "rankings", "finalized", "emitted")
RECOVERED = "hap_streams_changelog_recovered_records_total"


def changelog_records(consumer: KafkaConsumer, app_id: str) -> int:
    """Records the tables' changelogs hold now (end minus log start, every partition)."""
    parts = [TopicPartition(f"{app_id}-{t}-changelog", p) for t in TABLES
             for p in consumer.partitions_for_topic(f"{app_id}-{t}-changelog") or ()]
    ends, starts = consumer.end_offsets(parts), consumer.beginning_offsets(parts)
    return sum(ends[tp] - starts[tp] for tp in parts)


def first_group_s(url: str, killed_at: float, timeout_s: float) -> tuple[float | None, float | None]:
    """Seconds from ``killed_at`` until the new worker's metrics answer, and until it emitted a group."""
    up = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            groups = scrape(url).total("hap_streams_groups_total")
        except OSError:
            time.sleep(0.1)
            continue
        up = up if up is not None else time.monotonic() - killed_at
        if groups > 0:
            return up, time.monotonic() - killed_at
        time.sleep(0.1)
    return up, None


def restart(name: str, args: list[str], tmp: Path, env: dict[str, str], worker: Component, url: str,
            consumer: KafkaConsumer, app_id: str, timeout_s: float) -> tuple[Component, dict]:
    """SIGKILL ``worker``, start ``name`` with ``env``; what its recovery took."""
    assert worker.proc is not None
    held = changelog_records(consumer, app_id)
    os.kill(worker.proc.pid, signal.SIGKILL)  # the worker process itself (no supervisor here)
    killed_at = time.monotonic()
    worker.proc.wait()
    new = Component(name, args, tmp, env).start()
    up_s, emit_s = first_group_s(url, killed_at, timeout_s)
    time.sleep(5)  # a second rebalance (the killed member's session) may add partitions to recover
    recovered = scrape(url).total(RECOVERED)
    return new, {"changelog_records_held": held, "changelog_records_replayed": recovered,
                 "metrics_up_s": round(up_s, 2) if up_s is not None else None,
                 "first_group_s": round(emit_s, 2) if emit_s is not None else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="events/s the simulator produces")
    parser.add_argument("--warmup", type=float, default=90.0, help="seconds before the first kill")
    parser.add_argument("--between", type=float, default=90.0, help="seconds between the two kills")
    parser.add_argument("--window", type=float, default=5.0, help="join window, s")
    parser.add_argument("--timeout", type=float, default=300.0, help="the longest a restart may take, s")
    args = parser.parse_args()
    s = Settings.load()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        topics, port = f"recovery{uuid.uuid4().hex[:6]}.", free_port()
        app_id = "hap-streams-" + topics.rstrip(".")
        url = f"http://127.0.0.1:{port}/metrics"

        def env(data_dir: Path) -> dict[str, str]:
            return {**settings_env(kafka_bootstrap=s.kafka_bootstrap, redis_url=s.redis_url, data_dir=data_dir,
                                   topic_prefix=topics, streams_metrics_port=port),
                    "HAP_STREAMS_STATIC_MEMBERSHIP": "true", "HAP_WORKER_ID": "w"}

        ensure_topics(s.kafka_bootstrap, topics, security=s.kafka_security)
        worker_args = ["streams", "--worker-process", "--window", str(args.window), "--lateness", "1"]
        seconds = args.warmup + args.between + 60  # the second restart runs a minute with input
        requests = int(args.rate * seconds / 12)  # about 12 events per request
        sim = Component("simulate", ["simulate", "--requests", str(requests), "--rate", str(args.rate),
                                     "--candidates", "500", "--no-progress", "--truth", str(tmp / "truth.jsonl")],
                        tmp, env(tmp / "sim")).start()
        worker = Component("streams", worker_args, tmp, env(tmp / "first")).start()
        consumer = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap, **s.kafka_security.client_options())
        report: dict = {"rate_events_per_s": args.rate, "warmup_s": args.warmup, "between_s": args.between,
                        "store": s.streams_store}
        try:
            worker.wait_http(url, timeout_s=120)
            time.sleep(args.warmup)
            worker, report["empty_dir"] = restart("streams", worker_args, tmp, env(tmp / "second"), worker, url,
                                                  consumer, app_id, args.timeout)
            print(f"empty dir: {report['empty_dir']}", file=sys.stderr, flush=True)
            time.sleep(args.between)
            worker, report["own_dir"] = restart("streams", worker_args, tmp, env(tmp / "second"), worker, url,
                                                consumer, app_id, args.timeout)
            print(f"own dir: {report['own_dir']}", file=sys.stderr, flush=True)
            assert sim.proc is not None
            sim.proc.wait(timeout=seconds + 600)
            truth = {json.loads(line)["request_id"] for line in (tmp / "truth.jsonl").read_text().splitlines()}
            groups = read_groups(s, topics, truth)
        finally:
            for part in (sim, worker):
                part.kill()
            consumer.close()
        firsts = [g for g in groups if not g.correction]
        ids: dict[str, set[str]] = {}
        for g in firsts:
            ids.setdefault(g.request_id, set()).add(g.group_id)
        copies = Counter(g.group_id for g in firsts)
        report.update(requests=len(truth), lost=len(truth - set(ids)),
                      trained_twice=sum(len(v) > 1 for v in ids.values()),
                      groups_delivered_twice=sum(n > 1 for n in copies.values()),
                      state_dir_mb=round(du(tmp / "second") / 1e6, 1))
    print(json.dumps(report))


def read_groups(s: Settings, topics: str, truth: set[str], timeout_s: float = 300.0) -> list:
    """Every group of the samples topic, read until each request of ``truth`` has one (or ``timeout_s``)."""
    consumer = KafkaConsumer(f"{topics}samples", bootstrap_servers=s.kafka_bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=10_000, fetch_max_bytes=8 << 20, max_partition_fetch_bytes=8 << 20,
                             **s.kafka_security.client_options())
    groups, seen, deadline = [], set(), time.monotonic() + timeout_s
    try:
        while not truth <= seen and time.monotonic() < deadline:
            for message in consumer:
                group = decode_sample_group(message.value)
                groups.append(group)
                seen.add(group.request_id)
    finally:
        consumer.close()
    return groups


def du(path: Path) -> int:
    """Bytes of the files under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


if __name__ == "__main__":
    main()
