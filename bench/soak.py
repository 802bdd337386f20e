"""Soak: the whole pipeline under sustained ingest for minutes, with the router under load from a
second process. Is memory flat and is lag bounded?

1. `hap streams`, `hap learner` and `hap router` run as real processes on fresh topics;
   `hap simulate --duration` produces at ``--rate`` events/s (default: the streams bench's rate).
2. A second process posts pre-ranking requests to the router at ``--router-rps``.
3. Every ``--every`` seconds: each component's RSS (and each streams worker's, ``--workers``), the input rate
   over the interval, the streams workers' state on disk (their tables' RocksDB files, ``HAP_STREAMS_STORE``),
   the streams workers' RocksDB cache and the memtables charged to it (``hap_streams_rocksdb_memory_bytes``, all
   workers), the input
   backlog (the streams consumer group's lag: events produced and not yet committed), the
   event-to-sample lag p99 over that interval (join window included: ``--window``, short by default), the
   served model's age, and Redis' memory (``used_memory``) with the count of model blobs in it; one progress
   line each.

    python bench/soak.py [--minutes 5] [--rate 1000]   # needs a stack: `hap stack up`

``--store-only`` soaks the model store alone: versions of the learner's real tier sizes
(``--touched`` embedding rows changed per table) published once a second into the stack's Redis,
sampling ``used_memory`` and the blob count; ``--superseded-ttl 3600`` replays the old retention.

Memory is reported as a ratio against the same run's own baseline (RSS once warmed up, after
the first fifth; and the streams workers' from minute 3 to the end), lag as the backlog and the worst
interval p99. Writes each component's log and ``soak.png`` (RSS per component and streams worker, input rate,
state on disk, lag and backlog over time) under ``--out`` and ends with one JSON line {"rss_growth", "streams_workers":
{"rss_mb_max", "rss_growth_from_3min", "state_disk_mb_end", ...}, "backlog_events_max", "lag_p99_s_max",
"router_p99_ms", "redis_used_mb_max", ...}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import orjson
import redis
from kafka import KafkaConsumer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.pipeline import Component  # noqa: E402
from deploy.scrape import Metrics, scrape  # noqa: E402
from deploy.settings import Settings, settings_env  # noqa: E402
from deploy.stack.process import free_port  # noqa: E402
from feature_store.model_store import ModelKeys  # noqa: E402
from streams.kafka.topics import ensure_topics  # noqa: E402

PARTS = ("streams", "learner", "router")
LAG = "hap_streams_event_to_sample_seconds"


def router_load(url: str, stop_at: float, candidates: int, rps: float, out: multiprocessing.Queue) -> None:
    """Runs in a second process: post ``rps`` requests a second until ``stop_at``; send back
    latencies and failures."""
    body = orjson.dumps({"request_id": "soak", "user_id": "u1", "k": 50,
                         "candidates": [{"item_id": f"i{i}"} for i in range(candidates)]})
    latencies, failures = [], 0
    next_at = time.time()
    while time.time() < stop_at:
        next_at += 1 / rps
        time.sleep(max(0.0, next_at - time.time()))
        started = time.perf_counter()
        try:
            req = urllib.request.Request(f"{url}/v1/prerank", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=5) as resp:
                resp.read()
            latencies.append(time.perf_counter() - started)
        except (urllib.error.URLError, OSError):
            failures += 1
            time.sleep(0.1)
    out.put((latencies, failures))


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants (`hap streams` supervises a worker process); a
    thread or process that ends while it is read counts for nothing (0)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                    for c in _read_or_empty(task / "children").split()]
    except OSError:  # the process itself ended
        return 0.0
    own = sum(int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
    return own + sum(rss_mb(child) for child in children)


def _read_or_empty(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:  # a thread that ended between the listing and the read
        return ""


def offsets(consumer: KafkaConsumer, topics: list[str]) -> tuple[int, int]:
    """Events written to ``topics`` so far, and those of them the consumer's group has committed
    (``consumer`` only reads offsets: it never joins the group)."""
    parts = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
    ends = consumer.end_offsets(parts)
    return sum(ends.values()), sum(consumer.committed(tp) or 0 for tp in parts)


def redis_memory(client: redis.Redis, prefix: str) -> tuple[float, int]:
    """Redis' ``used_memory`` in MB and the number of model blobs of the store at ``prefix``."""
    used = int(client.info("memory")["used_memory"]) / 1e6
    return used, sum(1 for _ in client.scan_iter(match=ModelKeys(prefix).blob_pattern, count=1000))


def disk_mb(path: Path) -> float:
    """MB of the files under ``path`` (a streams worker's data dir: its tables' RocksDB state)."""
    total = 0
    for f in path.rglob("*"):
        try:
            total += f.stat().st_size if f.is_file() else 0
        except FileNotFoundError:  # RocksDB compacted it away meanwhile
            pass
    return total / 1e6


def worker_rows(streams: Component, data_dir: Path) -> dict[str, float]:
    """Each streams worker's RSS (the supervisor's children, by their start order) and its state on disk
    (``<data dir>/streams-<worker id>``, in name order)."""
    row: dict[str, float] = {}
    for n, pid in enumerate(sorted(streams.children())):
        try:
            row[f"rss_worker{n}_mb"] = rss_mb(pid)
        except FileNotFoundError:  # restarting
            pass
    for n, path in enumerate(sorted(data_dir.glob("streams-*"))):
        row[f"disk_worker{n}_mb"] = disk_mb(path)
    return row


def sample(parts: dict[str, Component], urls: dict[str, str], previous: Metrics | None,
           written_committed: tuple[int, int]) -> tuple[dict, Metrics]:
    streams = scrape(urls["streams"])
    window = streams.since(previous) if previous is not None else streams
    router = scrape(urls["router"])
    row = {f"rss_{name}_mb": rss_mb(part.proc.pid) for name, part in parts.items() if part.proc}
    row.update(lag_p99_s=window.quantile(LAG, 0.99), events=streams.total("hap_streams_events_total"),
               restarts=streams.total("hap_streams_worker_restarts_total"),
               model_age_s=router.total("hap_router_model_age_seconds"),
               rocksdb_cache_mb=streams.total("hap_streams_rocksdb_memory_bytes", part="cache") / 1e6,
               rocksdb_memtables_mb=streams.total("hap_streams_rocksdb_memory_bytes", part="memtables") / 1e6,
               version=router.total("hap_router_model_version"))
    row["written"], row["committed"] = written_committed
    row["backlog"] = row["written"] - row["committed"]
    return row, streams


def plot(rows: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t_s"] / 60 for r in rows]
    fig, (mem, state, lag) = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    for name in PARTS:
        mem.plot(t, [r[f"rss_{name}_mb"] for r in rows], label=name)
    workers = sorted({k for r in rows for k in r if k.startswith("rss_worker")})
    for key in workers if len(workers) > 1 else ():
        mem.plot(t, [r.get(key, 0) for r in rows], label=key.removeprefix("rss_").removesuffix("_mb"), linestyle=":")
    mem.plot(t, [r["redis_used_mb"] for r in rows], label="redis used_memory", linestyle="--")
    mem.plot(t, [r["rocksdb_cache_mb"] for r in rows], label="streams RocksDB cache", linestyle="--")
    mem.set_ylabel("RSS (MB)")
    mem.legend()
    for key in sorted({k for r in rows for k in r if k.startswith("disk_worker")}):
        state.plot(t, [r.get(key, 0) for r in rows], label=f"{key.removeprefix('disk_').removesuffix('_mb')} on disk")
    state.set_ylabel("streams state (MB)")
    state.legend(loc="upper left")
    rate = state.twinx()
    rate.plot(t, [r["input_events_per_s"] for r in rows], color="grey", linestyle=":", label="input events/s")
    rate.set_ylabel("input events/s")
    lag.plot(t, [r["lag_p99_s"] or 0 for r in rows], label="event->sample p99 (interval)")
    lag.plot(t, [r["model_age_s"] for r in rows], label="served model age")
    lag.set_ylabel("seconds")
    backlog = lag.twinx()
    backlog.plot(t, [r["backlog"] for r in rows], color="grey", linestyle=":", label="backlog (events)")
    backlog.set_ylabel("events not yet consumed")
    lag.set_xlabel("minutes")
    lag.legend()
    fig.tight_layout()
    path = out / "soak.png"
    fig.savefig(path, dpi=100)
    return path


def store_soak(args: argparse.Namespace, settings: Settings) -> dict:
    """Publish a version a second for ``--minutes`` (the learner's cadence and tier sizes) under a
    private key prefix; Redis' memory and the blob count over time."""
    from feature_store.model_store import ModelStore, TierForm
    from learner.trainer import OnlineTrainer

    client = settings.redis.client()
    prefix = f"soak{uuid.uuid4().hex[:6]}:"
    store = ModelStore(client, prefix=prefix, superseded_ttl_s=args.superseded_ttl)
    forms = {name: tier.export() for name, tier in OnlineTrainer().tiers().items()}
    rng = np.random.default_rng(0)
    rows, started = [], time.time()
    seconds = int(args.minutes * 60)
    try:
        for n in range(seconds):
            tiers = {name: TierForm(tensors, spec, {e: rng.choice(len(tensors[e]), args.touched, replace=False)
                                                    for e in spec["embeddings"]})
                     for name, (tensors, spec) in forms.items()}
            store.publish(tiers, trained_until_event_ts_ms=0, trained_until_finalized_ts_ms=0, samples_seen=n)
            if n % int(args.every) == 0 or n == seconds - 1:
                used, blobs = redis_memory(client, prefix)
                rows.append({"t_s": round(time.time() - started, 1), "versions": n + 1, "redis_used_mb": used,
                             "model_blobs": blobs})
                print(f"[{rows[-1]['t_s']:6.0f}s] versions {n + 1}  redis {used:.0f}MB ({blobs} blobs)",
                      file=sys.stderr, flush=True)
            time.sleep(max(0.0, started + n + 1 - time.time()))
    finally:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
    warm = [r for r in rows if r["t_s"] >= 90]  # after the 60 s grace of the first superseded blobs
    return {"mode": "store-only", "minutes": args.minutes, "superseded_ttl_s": args.superseded_ttl,
            "touched_rows": args.touched, "versions": rows[-1]["versions"],
            "redis_used_mb_first": round(rows[0]["redis_used_mb"], 1),
            "redis_used_mb_max": round(max(r["redis_used_mb"] for r in rows), 1),
            "redis_used_mb_max_after_90s": round(max(r["redis_used_mb"] for r in warm), 1) if warm else None,
            "redis_used_mb_last": round(rows[-1]["redis_used_mb"], 1),
            "model_blobs_max": max(r["model_blobs"] for r in rows)}


def streams_workers(rows: list[dict], workers: int) -> list[dict]:
    """Per streams worker: its RSS (max, at minute 3, at the end, and the growth between), its state on disk
    (max, at the end), and both per 1,000 input events/s of the whole run (divided among the workers)."""
    after3 = [r for r in rows if r["t_s"] >= 180] or rows[-1:]
    rate = (rows[-1]["written"] - rows[0]["written"]) / max(1e-9, rows[-1]["t_s"] - rows[0]["t_s"]) / workers
    out = []
    for n in range(workers):
        rss = [r.get(f"rss_worker{n}_mb", 0.0) for r in rows]
        disk = [r.get(f"disk_worker{n}_mb", 0.0) for r in rows]
        at3 = after3[0].get(f"rss_worker{n}_mb") or None
        out.append({"input_events_per_s": round(rate, 1), "rss_mb_max": round(max(rss), 1),
                    "rss_mb_at_3min": round(at3, 1) if at3 else None, "rss_mb_end": round(rss[-1], 1),
                    "rss_growth_from_3min": round(max(r.get(f"rss_worker{n}_mb", 0.0) for r in after3) / at3, 3)
                    if at3 else None,
                    "state_disk_mb_max": round(max(disk), 1), "state_disk_mb_end": round(disk[-1], 1),
                    "rss_mb_per_1k_events_per_s": round(rss[-1] / rate * 1000, 1) if rate else None,
                    "disk_mb_per_1k_events_per_s": round(disk[-1] / rate * 1000, 1) if rate else None})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s (bench/streams.py measures one worker)")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--candidates", type=int, default=1000, help="candidates per router request")
    parser.add_argument("--router-rps", type=float, default=50.0, help="router requests per second")
    parser.add_argument("--workers", type=int, default=1, help="streams worker processes (`hap streams --workers`)")
    parser.add_argument("--window", type=float, default=2.0,
                        help="join window, s: short, so that the lag shows processing rather than waiting")
    parser.add_argument("--out", type=Path, default=Path(".hap/bench"))
    parser.add_argument("--store-only", action="store_true", help="soak the model store alone (Redis memory)")
    parser.add_argument("--touched", type=int, default=3000, help="--store-only: rows changed per table a version")
    parser.add_argument("--superseded-ttl", type=int, default=60,
                        help="--store-only: TTL of superseded blobs (3600: the retention before issue 14)")
    args = parser.parse_args()
    s = Settings.load()
    if args.store_only:
        print(json.dumps(store_soak(args, s)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        topics, ports = f"soak{uuid.uuid4().hex[:6]}.", {name: free_port() for name in ("streams", "learner", "router")}
        env = settings_env(kafka_bootstrap=s.kafka_bootstrap, redis_url=s.redis_url, data_dir=tmp, topic_prefix=topics,
                           streams_metrics_port=ports["streams"], learner_metrics_port=ports["learner"],
                           router_port=ports["router"])
        ensure_topics(s.kafka_bootstrap, topics, security=s.kafka_security)
        urls = {name: f"http://127.0.0.1:{port}/metrics" for name, port in ports.items()}
        streams = ["streams", "--window", str(args.window), "--lateness", "1", "--workers", str(args.workers)]
        parts = {"streams": Component("streams", streams, tmp, env),
                 "learner": Component("learner", ["learner"], tmp, env),
                 "router": Component("router", ["router"], tmp, env)}
        for part in parts.values():
            part.start()
        duration = args.minutes * 60
        # produces from now until the soak ends (stopped then), the wait for the first model included
        sim = Component("simulate", ["simulate", "--requests", str(10**9), "--rate",
                        str(args.rate), "--candidates", "500", "--items", "20000", "--no-progress"], tmp, env).start()
        try:
            parts["router"].wait_http(urls["router"].replace("/metrics", "/readyz"), timeout_s=120)
            results: multiprocessing.Queue = multiprocessing.Queue()
            started = time.time()
            load = multiprocessing.Process(target=router_load, args=(
                urls["router"].removesuffix("/metrics"), started + duration, args.candidates, args.router_rps, results))
            load.start()
            rows, previous = [], None
            group = "hap-streams-" + topics.rstrip(".")  # the workers' consumer group
            reader = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=group, enable_auto_commit=False,
                                   **s.kafka_security.client_options())
            inputs = [topics + t for t in ("ranking", "exposure")]
            store = s.redis.client()
            start = {"written": offsets(reader, inputs)[0], "t_s": round(time.time() - started, 1)}
            while time.time() - started < duration:
                time.sleep(args.every)
                try:
                    row, previous = sample(parts, urls, previous, offsets(reader, inputs))
                except (urllib.error.URLError, ConnectionError) as exc:  # a worker restarting: back soon
                    print(f"[{time.time() - started:6.0f}s] no sample: {exc}", file=sys.stderr, flush=True)
                    continue
                row.update(worker_rows(parts["streams"], tmp))
                row["redis_used_mb"], row["model_blobs"] = redis_memory(store, s.redis_prefix)
                row["t_s"] = round(time.time() - started, 1)
                before = rows[-1] if rows else start
                row["input_events_per_s"] = (row["written"] - before["written"]) / max(1e-9, row["t_s"] - before["t_s"])
                rows.append(row)
                dead = [name for name, part in parts.items() if not part.alive]
                print(f"[{row['t_s']:6.0f}s] events {row['events']:.0f} backlog {row['backlog']:.0f}  "
                      f"lag p99 {row['lag_p99_s'] or 0:.2f}s  "
                      f"version {row['version']:.0f}  age {row['model_age_s']:.1f}s  "
                      f"redis {row['redis_used_mb']:.0f}MB ({row['model_blobs']} blobs)  "
                      f"in {row['input_events_per_s']:.0f}/s  RSS "
                      + " ".join(f"{n} {row[f'rss_{n}_mb']:.0f}MB" for n in PARTS)
                      + "  workers " + " ".join(f"{row.get(f'rss_worker{n}_mb', 0):.0f}MB/"
                                                f"{row.get(f'disk_worker{n}_mb', 0):.0f}MB on disk"
                                                for n in range(args.workers))
                      + f"  rocksdb cache {row['rocksdb_cache_mb']:.0f}MB"
                      + f" (memtables {row['rocksdb_memtables_mb']:.0f}MB)",
                      file=sys.stderr, flush=True)
                if dead:
                    raise SystemExit(f"soak: {', '.join(dead)} died; see {tmp}")
            latencies, failures = results.get(timeout=60)
            load.join()
        finally:
            for part in [sim, *parts.values()]:
                part.stop()
                shutil.copy(part.log_file, args.out)  # the temporary dir goes with the soak: its logs stay
        chart = plot(rows, args.out)
    warm = rows[max(1, len(rows) // 5) - 1]
    growth = {n: round(rows[-1][f"rss_{n}_mb"] / warm[f"rss_{n}_mb"], 3) for n in PARTS}
    lags = [r["lag_p99_s"] for r in rows if r["lag_p99_s"] is not None]
    ms = np.array(latencies) * 1000
    print(json.dumps({
        "minutes": args.minutes, "rate_events_per_s": args.rate,
        "produced_events_per_s": round((rows[-1]["written"] - rows[0]["written"]) / (rows[-1]["t_s"] - rows[0]["t_s"]),
                                       1),
        "consumed_events_per_s": round(
            (rows[-1]["committed"] - rows[0]["committed"]) / (rows[-1]["t_s"] - rows[0]["t_s"]), 1),
        "worker_restarts": rows[-1]["restarts"],
        "backlog_events_first": rows[0]["backlog"], "backlog_events_max": max(r["backlog"] for r in rows),
        "backlog_events_last": rows[-1]["backlog"], "join_window_s": args.window,
        "rss_growth": growth, "rss_end_mb": {n: round(rows[-1][f"rss_{n}_mb"], 1) for n in PARTS},
        "streams_workers": streams_workers(rows, args.workers), "store": s.streams_store,
        "rocksdb_cache_mb_max": round(max(r["rocksdb_cache_mb"] for r in rows), 1),
        "lag_p99_s_first": lags[0] if lags else None, "lag_p99_s_max": max(lags) if lags else None,
        "lag_p99_s_last": lags[-1] if lags else None,
        "model_age_s_max": max(r["model_age_s"] for r in rows), "versions": rows[-1]["version"],
        "redis_used_mb_first": round(rows[0]["redis_used_mb"], 1),
        "redis_used_mb_max": round(max(r["redis_used_mb"] for r in rows), 1),
        "redis_used_mb_last": round(rows[-1]["redis_used_mb"], 1),
        "model_blobs_max": max(r["model_blobs"] for r in rows),
        "router_rps": args.router_rps, "router_requests": len(latencies), "router_failures": failures,
        "router_p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "router_p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None, "plot": str(chart),
    }))


if __name__ == "__main__":
    main()
