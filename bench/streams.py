"""Streams throughput of one worker against a plain aiokafka consumer of the same topics, and lag.

1. Simulated traffic is written to fresh topics; one `hap streams` worker (a real process,
   window 0.5 s) assembles it: events/s and candidate-samples/s from its first to its last event.
2. A plain aiokafka consumer reads the same topics in this process: the Python ceiling.
3. Fresh traffic at half the worker's rate: p50/p99 of event-to-sample lag (its histogram).

    python bench/streams.py [--requests 1500]     # needs a stack: `hap stack up` (or HAP_* endpoints)

Ends with one JSON line {"events_per_s", "raw_events_per_s", "ratio", "lag_p50_s", "lag_p99_s", ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.pipeline import Component  # noqa: E402
from deploy.scrape import scrape  # noqa: E402
from deploy.settings import Settings  # noqa: E402
from deploy.stack.process import free_port  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402


def simulate(env: dict[str, str], requests: int, rate: float) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        subprocess.run([sys.executable, "-m", "deploy.cli", "simulate", "--requests", str(requests), "--rate",
                        str(rate), "--candidates", "500", "--items", "5000", "--no-progress", "--report", report.name],
                       env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL)
        return json.loads(Path(report.name).read_text())


def worker_rate(env: dict[str, str], total_events: int, tmp: Path) -> tuple[float, float]:
    url = f"http://127.0.0.1:{env['HAP_STREAMS_METRICS_PORT']}/metrics"
    worker = Component("streams", ["streams", "--window", "0.5", "--lateness", "0"], tmp, env).start()
    try:
        worker.wait_http(url)
        first = last = None
        done = 0.0
        deadline = time.monotonic() + 600
        while done < total_events and time.monotonic() < deadline:
            m = scrape(url)
            done = m.total("hap_streams_events_total")
            if done and first is None:
                first = time.monotonic()
            last = time.monotonic()
            time.sleep(0.1)
        time.sleep(2)
        samples = scrape(url).total("hap_streams_samples_total")
    finally:
        worker.stop()
    elapsed = max(last - first, 1e-3)
    return done / elapsed, samples / elapsed


async def raw_rate(bootstrap: str, topics: list[str], total: int) -> float:
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=f"bench-raw-{uuid.uuid4().hex[:6]}")
    await consumer.start()
    count, started = 0, None
    try:
        while count < total:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            n = sum(len(v) for v in batch.values())
            if n and started is None:
                started = time.monotonic()
            count += n
    finally:
        await consumer.stop()
    return count / (time.monotonic() - started)


def lag(env: dict[str, str], requests: int, rate: float, tmp: Path) -> tuple[float | None, float | None]:
    url = f"http://127.0.0.1:{env['HAP_STREAMS_METRICS_PORT']}/metrics"
    worker = Component("streams-lag", ["streams", "--window", "0.5", "--lateness", "0"], tmp, env).start()
    try:
        worker.wait_http(url)
        time.sleep(3)
        simulate(env, requests, rate)
        time.sleep(5)
        m = scrape(url)
    finally:
        worker.stop()
    name = "hap_streams_event_to_sample_seconds"
    return m.quantile(name, 0.5), m.quantile(name, 0.99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500)
    args = parser.parse_args()
    s = Settings.load()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        env = {"HAP_KAFKA_BOOTSTRAP": s.kafka_bootstrap, "HAP_REDIS_URL": s.redis_url,
               "HAP_TOPIC_PREFIX": f"benchs{uuid.uuid4().hex[:6]}.", "HAP_DATA_DIR": str(tmp),
               "HAP_STREAMS_METRICS_PORT": str(free_port())}
        ensure_topics(s.kafka_bootstrap, env["HAP_TOPIC_PREFIX"])
        report = simulate(env, args.requests, 0)
        total = report["ranking"] + report["exposure"] + report["feedback"]
        events_per_s, samples_per_s = worker_rate(env, total, tmp)
        prefix = env["HAP_TOPIC_PREFIX"]
        raw = asyncio.run(raw_rate(s.kafka_bootstrap, [f"{prefix}ranking", f"{prefix}exposure"], total))
        env["HAP_TOPIC_PREFIX"] = f"benchl{uuid.uuid4().hex[:6]}."
        ensure_topics(s.kafka_bootstrap, env["HAP_TOPIC_PREFIX"])
        p50, p99 = lag(env, max(200, args.requests // 3), events_per_s / 2, tmp)
    print(json.dumps({
        "events_per_s": round(events_per_s, 1), "candidate_samples_per_s": round(samples_per_s, 1),
        "raw_events_per_s": round(raw, 1), "ratio": round(events_per_s / raw, 3), "events": total,
        "lag_p50_s": p50, "lag_p99_s": p99, "lag_rate_events_per_s": round(events_per_s / 2, 1),
        "join_window_s": 0.5,
    }))


if __name__ == "__main__":
    main()
