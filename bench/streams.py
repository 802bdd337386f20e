"""Streams throughput of one worker against plain consumers of the same topics; memory and lag.

1. Simulated traffic (500 candidates per request) is written to fresh topics; one `hap streams`
   worker (a real process, window 0.5 s) assembles it: events/s, requests/s (ranking events)
   from its first to its last event, and candidate samples/s up to its last group; its RSS, the
   highest while it works the backlog off, at the end, and 35 s later (``worker_rss_mb_peak``,
   ``_drained``, ``_after_35s``: what it keeps of a backlog).
2. Two plain aiokafka consumers read the same topics in this process: one only counts records
   (the raw ceiling), one also decodes every record with the worker's JSON codec (orjson). The
   join alone (the worker's ``Joiner``, in memory, no Kafka, no Redis) over the same records:
   its CPU time per record next to orjson's parse of them. The ceiling of Faust's stream: a bare
   Faust agent (``bench/faust_ceiling.py``) that takes the same records in the worker's batches
   and does nothing with them (``faust_events_per_s``; ``faust_ratio``, ``faust_ratio_vs_decode``
   as the worker's; ``worker_vs_faust``: the worker's share of it); and the same agent with the
   worker's hand-over from Faust's consumer to its streams (``streams/worker/drain.py``):
   ``faust_stepped_events_per_s``, ``worker_vs_faust_stepped``.
3. Memory: a fresh worker with a join window longer than the run (nothing closes) is fed fresh
   traffic; its RSS growth divided by its pending requests.
4. Lag: fresh traffic at half the worker's rate: p50/p99 of event-to-sample lag (the worker's
   histogram), to hold within the window + 1 s. The run counts only if the simulator kept its
   schedule (``lag_sim_on_schedule``: ``lag_sim_max_late_ms`` ≤ 250): one that falls behind sends
   events whose times trail the wall clock, and windows close that much later, whatever the
   worker does. The simulator generates its requests before its clock starts and sends from
   :data:`LAG_EMITTERS` processes (`hap simulate --pregenerate, --processes`);
   ``lag_achieved_events_per_s`` is the rate it held.
5. With ``--workers 1,2``: `hap streams --workers N` on a backlog of its own for each N (the same
   traffic as step 1, simulated once and copied into each run's topics by a plain producer, several
   times faster than the workers take it), copied once their group has formed (every worker holds
   ranking partitions), timed from when it is all there: events/s of the N workers together
   (``workers_<N>_events_per_s``) and the ratio to the first N (``workers_2_over_1``). For N > 1
   also on a backlog that is there before they start (``workers_<N>_started_on_backlog_...``): the
   local broker completes a new group's first rebalance at once
   (``group.initial.rebalance.delay.ms=0``; Kafka's default waits 3 s for more members), so the
   first worker to join takes every partition and works until the others join and the group
   rebalances mid-backlog.

    python bench/streams.py [--requests 2000] [--py-spy prof.txt] [--workers 1,2]   # needs `hap stack up`

``--py-spy`` profiles the worker of step 1 (py-spy raw format, 100 Hz) and prints its top frames
and the share of its parts (:data:`PARTS`) to stderr; ``--parts prof.txt`` prints the parts of
an earlier profile. ``--threads`` prints the worker's CPU per event by thread (the event loop, the Redis
thread, Faust's consumer thread; ``/proc`` over the measured span, named by ``py-spy dump``);
``--throughput-only`` runs steps 1 and 2 only; ``--keep DIR`` keeps the workers' logs and data dirs under
``DIR``. On a shared machine the rates move with the other load; the CPU time per
event of the worker and of the decoding consumer (``cpu_ratio_vs_decode``, theirs over the
worker's) much less.
Ends with one JSON line {"events_per_s", "requests_per_s", "candidate_samples_per_s",
"raw_events_per_s", "decode_events_per_s", "ratio", "ratio_vs_decode", "worker_cpu_us_per_event",
"decode_cpu_us_per_event", "cpu_ratio_vs_decode", "rss_per_pending_kb", "lag_p50_s", "lag_p99_s", ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.pipeline import Component  # noqa: E402
from deploy.scrape import Metrics, scrape  # noqa: E402
from deploy.settings import Settings, settings_env  # noqa: E402
from deploy.stack.process import free_port  # noqa: E402
from streams.kafka.topics import INPUTS, ensure_topics  # noqa: E402
from streams.worker.heap import TRIM_EVERY_S  # noqa: E402

WINDOW = ["--window", "0.5", "--lateness", "0"]
PARTITIONS = 4  # of every topic the bench creates (the worker's default)
POLL_S = 0.5  # the worker answers each scrape: polling faster costs it measurably
#: the polls' period once the backlog's last events are due within two polls, so the workers are timed to
#: their last event within this, not within POLL_S (3-7% of a 7-second run, always too long)
FINE_POLL_S = 0.02
LAG_S = 30  # seconds of traffic in the lag run, at most
#: a lag run counts when the simulator kept its schedule within this (its event times trail the wall
#: clock by as much as it falls behind, and the windows close that much later)
SIM_LATE_MS = 250.0
#: simulator processes of the lag run (each pre-generates its share of the requests, then sends it)
LAG_EMITTERS = 2
#: seconds after the backlog's last event at which the worker's RSS is read again (its heap trim's
#: period, :data:`streams.worker.heap.TRIM_EVERY_S`, and 5 s)
SETTLE_S = TRIM_EVERY_S + 5
RSS = "process_resident_memory_bytes"  # each worker's, from its metrics


def simulate(env: dict[str, str], requests: int, rate: float, processes: int = 1) -> tuple[dict, float]:
    """Run `hap simulate`; its report and how long it took."""
    started = time.monotonic()
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        subprocess.run([sys.executable, "-m", "deploy.cli", "simulate", "--requests", str(requests), "--rate",
                        str(rate), "--candidates", "500", "--items", "5000", "--no-progress", "--report", report.name,
                        "--processes", str(processes), "--pregenerate", str(requests)],
                       env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL)
        return json.loads(Path(report.name).read_text()), time.monotonic() - started


def fresh_topics(env: dict[str, str], bootstrap: str, name: str) -> None:
    """Point ``env`` at new topics of their own."""
    env |= settings_env(topic_prefix=f"bench{name}{uuid.uuid4().hex[:6]}.")
    ensure_topics(bootstrap, Settings.load(env).topic_prefix, PARTITIONS)


def metrics_url(env: dict[str, str], n: int = 0) -> str:
    """Worker ``n``'s metrics (`hap streams --workers N` gives worker n the port + n)."""
    return f"http://127.0.0.1:{Settings.load(env).streams_metrics_port + n}/metrics"


def worker_pids(component: Component, workers: int = 1) -> list[int]:
    """The pids of the worker processes that `hap streams` (a supervisor) started."""
    for _ in range(300):
        if len(pids := component.children()) >= workers:
            return pids
        time.sleep(0.1)
    raise RuntimeError(f"{workers} streams worker processes did not start")


def scrape_each(urls: list[str]) -> list[Metrics]:
    """Each worker's metrics."""
    return [scrape(url) for url in urls]


def summed(each: list[Metrics]) -> Metrics:
    """The workers' metrics as one: each series summed over them."""
    total: dict = {}
    for metrics in each:
        for key, value in metrics.samples.items():
            total[key] = total.get(key, 0.0) + value
    return Metrics(total)


def scrape_all(urls: list[str]) -> Metrics:
    """:func:`summed` of :func:`scrape_each`."""
    return summed(scrape_each(urls))


def formed(each: list[Metrics]) -> bool:
    """The workers' group has formed: every worker holds ranking partitions, all of them between them."""
    held = [m.total("hap_streams_assigned_partitions", topic="ranking") for m in each]
    return min(held) > 0 and sum(held) == PARTITIONS


def wait_formed(urls: list[str], timeout_s: float = 120.0) -> float:
    """Wait until the workers' group has formed (:func:`formed`); returns how long that took."""
    started = time.monotonic()
    while not formed(scrape_each(urls)):
        if time.monotonic() > started + timeout_s:
            raise RuntimeError(f"the group of {len(urls)} streams workers did not form in {timeout_s:.0f} s")
        time.sleep(POLL_S)
    return time.monotonic() - started


def cpu_seconds_of(stat: Path) -> float:
    """User and system CPU time in a ``/proc`` ``stat`` file."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (all its threads)."""
    return cpu_seconds_of(Path(f"/proc/{pid}/stat"))


def thread_cpu(pid: int) -> dict[int, float]:
    """User and system CPU time of each thread of a process so far, by its OS thread id."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = cpu_seconds_of(task / "stat")
        except (FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile
            pass
    return out


def thread_names(pid: int) -> dict[int, str]:
    """Each Python thread of a process by its OS thread id: its name and the frame near the bottom of its
    stack that says what it runs (``py-spy dump``)."""
    dump = subprocess.run([str(Path(sys.executable).with_name("py-spy")), "dump", "--json", "--pid", str(pid)],
                          capture_output=True, text=True, timeout=60)
    names = {}
    for thread in json.loads(dump.stdout or "[]"):
        frames = [f["name"] for f in reversed(thread.get("frames", []))]
        what = next((f for f in frames if f not in ("_bootstrap", "_bootstrap_inner", "run", "<module>",
                                                     "_run_module_as_main", "_run_code", "main")), "")
        names[thread["os_thread_id"]] = f"{thread.get('thread_name') or '?'}: {what}"
    return names


def worker_rate(env: dict[str, str], total_events: int, tmp: Path, py_spy: Path | None,
                workers: int = 1, threads: bool = False, settle: bool = False,
                backlog: Callable[[], object] | None = None) -> dict[str, float]:
    """Events/s and requests/s from the first to the last event, and the workers' CPU time per
    event over the same span; candidate samples/s up to the last group (`hap streams --workers
    ``workers``: their metrics summed); the workers' RSS (their ``process_resident_memory_bytes``), the
    highest while they worked the backlog off and at its end, and with ``settle`` :data:`SETTLE_S` after it
    too (what they keep of it). The input is there before the workers start, or, with ``backlog``,
    produced by it once their group has formed (``formed_after_s``: how long that took; ``backlog_s``: how
    long producing it took), and the workers are timed from when it is all there (what they took while it
    was produced is left out)."""
    urls = [metrics_url(env, n) for n in range(workers)]
    worker = Component("streams", ["streams", *WINDOW, "--workers", str(workers)], tmp, env).start()
    spy = None
    forming: dict[str, float] = {}
    try:
        for url in urls:
            worker.wait_http(url)
        if backlog is not None:  # the polling below times the workers from when it is all there
            forming["formed_after_s"] = wait_formed(urls)
            producing = time.monotonic()
            backlog()
            forming["backlog_s"] = time.monotonic() - producing
        pids = worker_pids(worker, workers)
        pid = pids[0]
        if py_spy:
            spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid),
                                    "--rate", "100", "--format", "raw", "--nonblocking", "-o", str(py_spy)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        first = last = None
        peak = 0.0  # the workers' RSS, bytes
        m = Metrics({})
        deadline = time.monotonic() + 900
        while m.total("hap_streams_events_total") < total_events and time.monotonic() < deadline:
            m = scrape_all(urls)
            if first is None and m.total("hap_streams_events_total"):
                first, cpu_first = time.monotonic(), sum(map(cpu_seconds, pids))
                threads_first = thread_cpu(pid) if threads else {}
                first_events = m.total("hap_streams_events_total")
                first_requests = m.total("hap_streams_events_total", topic="ranking")
            last, cpu_last = time.monotonic(), sum(map(cpu_seconds, pids))
            threads_last = thread_cpu(pid) if threads else {}
            peak = max(peak, m.total(RSS))
            taken = m.total("hap_streams_events_total")
            ending = first is not None and (total_events - taken) * (last - first) < 2 * POLL_S * (taken - first_events)
            time.sleep(FINE_POLL_S if ending else POLL_S)
        done = m
        drained = m.total(RSS)
        events = done.total("hap_streams_events_total") - first_events
        if threads:
            names = thread_names(pid)
            for tid, cpu in sorted(threads_last.items(), key=lambda t: t[1] - threads_first.get(t[0], 0.0),
                                   reverse=True):
                used = cpu - threads_first.get(tid, 0.0)
                if used > 0:
                    print(f"worker thread CPU: {1e6 * used / events:6.1f} us/event  {tid} "
                          f"{names.get(tid, '(not Python)')}", file=sys.stderr)
        samples, last_sample = m.total("hap_streams_samples_total"), last
        while time.monotonic() < last_sample + 2:  # groups still closing after the last event
            time.sleep(POLL_S)
            now = scrape_all(urls).total("hap_streams_samples_total")
            if now > samples:
                samples, last_sample = now, time.monotonic()
        if settle:
            time.sleep(max(0.0, last + SETTLE_S - time.monotonic()))
            settled = scrape_all(urls).total(RSS)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
            spy.wait(60)
        worker.stop()
    elapsed = max(last - first, 1e-3)
    memory = {"worker_rss_mb_peak": round(peak / 2**20), "worker_rss_mb_drained": round(drained / 2**20)}
    if settle:
        memory[f"worker_rss_mb_after_{SETTLE_S:.0f}s"] = round(settled / 2**20)
    return {**memory, **forming, "events_per_s": (done.total("hap_streams_events_total") - first_events) / elapsed,
            "requests_per_s": (done.total("hap_streams_events_total", topic="ranking") - first_requests) / elapsed,
            "candidate_samples_per_s": samples / max(last_sample - first, 1e-3),
            "worker_cpu_us_per_event": 1e6 * (cpu_last - cpu_first) / events,
            "worker_seconds": elapsed}


@contextlib.asynccontextmanager
async def from_the_beginning(bootstrap: str, topics: list[str]) -> AsyncIterator[tuple[AIOKafkaConsumer, list]]:
    """A plain aiokafka consumer of every partition of ``topics`` (assigned, no group to join), at their
    beginning, and those partitions; stopped on the way out."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                max_partition_fetch_bytes=8 << 20, fetch_max_bytes=32 << 20)
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        yield consumer, partitions
    finally:
        await consumer.stop()


async def consumer_rate(bootstrap: str, topics: list[str], total: int, decode: bool,
                        keep: list | None = None) -> tuple[float, float]:
    """Records/s of a plain aiokafka consumer reading ``topics`` from the beginning (its partitions
    assigned, no group to join) until ``total`` records (``decode``: each parsed with orjson), and
    its CPU time per record (this process's, over the same span). ``keep`` receives the records."""
    async with from_the_beginning(bootstrap, topics) as (consumer, _):
        count, started, cpu = 0, time.monotonic(), time.process_time()
        while count < total:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in batch.values():
                if decode:
                    for record in records:
                        orjson.loads(record.value)
                count += len(records)
                if keep is not None:
                    keep += records
        elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
    return count / elapsed, 1e6 * cpu / count


async def read_topics(bootstrap: str, topics: list[str]) -> list:
    """Every record of ``topics``, as a plain consumer reads them (partitions assigned, no group)."""
    async with from_the_beginning(bootstrap, topics) as (consumer, partitions):
        ends = await consumer.end_offsets(partitions)
        records: list = []
        left = {tp for tp, end in ends.items() if end > 0}
        while left:
            for tp, batch in (await consumer.getmany(timeout_ms=1000, max_records=5000)).items():
                records += batch
                if batch[-1].offset + 1 >= ends[tp]:
                    left.discard(tp)
        return records


async def copy_records(bootstrap: str, records: list, source: str, target: str) -> None:
    """``records`` (of topics named ``source`` + name) into the same partitions of ``target`` + name,
    keys, values, headers and timestamps as they were, as fast as a plain producer sends them, in the
    order they were first produced (their timestamps: a consumer reads them back a partition at a time,
    and a request's exposures copied before its ranking event would make other work for the join)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20,
                                max_request_size=16 << 20)
    await producer.start()
    try:
        for r in sorted(records, key=lambda r: (r.timestamp, r.topic != f"{source}ranking")):
            await producer.send(target + r.topic.removeprefix(source), r.value, key=r.key, partition=r.partition,
                                timestamp_ms=r.timestamp, headers=list(r.headers) or None)
        await producer.flush()
    finally:
        await producer.stop()


class _NoStatistics:
    """The feature store's side of the join, without Redis (every item without statistics)."""

    def count(self, event: object, dwell_threshold_ms: int, topic: str, partition: int, offset: int) -> None:
        pass

    def set_history(self, user_id: str, history: list[str]) -> None:
        pass

    def flush(self) -> None:
        pass

    async def read_groups(self, requests: list) -> list[list[dict]]:
        return [[{} for _ in ids] for ids, *_ in requests]


def join_in_process(records: list, prefix: str) -> dict[str, float]:
    """CPU time per record of the join alone (:class:`streams.join.joiner.Joiner`, in-memory tables, no
    Kafka, no Redis) over ``records`` in batches of 1000 in the order they were produced, every
    window closed after the last; and of orjson's parse of the same records."""
    from streams.join.assembler import AssemblerConfig
    from streams.join.joiner import JoinConfig, Joiner, JoinTables
    from streams.join.pool import CandidatePool

    records = sorted(records, key=lambda r: (r.timestamp, r.topic != f"{prefix}ranking"))
    tick = type(records[0])(f"{prefix}streams-ticks", 0, 0, 0, 0, b"", b"", None, 0, 0, [])
    joiner = Joiner(JoinConfig(prefix, AssemblerConfig(window_ms=0, lateness_ms=0)), JoinTables.in_memory(),
                    lambda kind, key, value: None, _NoStatistics(), CandidatePool(), clock=lambda: 2**62)

    ticks = [dataclasses.replace(tick, partition=p) for p in range(PARTITIONS)]

    async def run() -> None:
        for i in range(0, len(records), 1000):
            await joiner.process(records[i:i + 1000])
        await joiner.process(ticks)

    cpu = time.process_time()
    asyncio.run(run())
    join_cpu = time.process_time() - cpu
    cpu = time.process_time()
    for record in records:
        orjson.loads(record.value)
    parse_cpu = time.process_time() - cpu
    return {"join_cpu_us_per_event": round(1e6 * join_cpu / len(records), 1),
            "orjson_cpu_us_per_event": round(1e6 * parse_cpu / len(records), 1)}


#: the worker's parts in a py-spy profile: a sample counts for the first part one of whose frames its stack holds
PARTS = {
    "waiting (epoll)": ("EpollSelector.select", "_PollLikeSelector.select"),
    "the join (Joiner.process)": ("Joiner.process",),
    "Redis thread": ("StreamFeatures._write", "StreamFeatures._read"),
    "input decompression (gzip)": ("gzip_decode",),
    "producer: aiokafka sender, compression": ("Sender.", "SendProduceReqHandler"),
    "producer: the sends (Faust's or the batch producer's)": (
        "send_outbox", "Topic.publish_message", "ProducerBuffer", "Producer.send", "AIOKafkaProducer.send",
        "send_changelog", "BatchProducer.deliver"),
    "consumer: aiokafka fetcher": ("Fetcher.", "AIOKafkaConsumerThread", "MethodQueue"),
    "consumer: Faust's drain, conductor, stream, events": (
        "_drain_messages", "on_message", "take_events", "Stream._c_aiter", "_to_message", "Conductor"),
    "metrics endpoint (the bench's scrapes)": ("MetricsHandler", "generate_latest", "ThreadingHTTPServer"),
}


def profile_parts(raw: Path) -> dict[str, float]:
    """Share (%) of each of :data:`PARTS` in a py-spy raw profile of the worker; the rest is
    ``other`` (the event loop's own work, futures and tasks, timers)."""
    counts = dict.fromkeys([*PARTS, "other"], 0)
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        part = next((name for name, frames in PARTS.items() if any(f in stack for f in frames)), "other")
        counts[part] += int(n)
    samples = max(sum(counts.values()), 1)
    return {name: round(100 * n / samples, 1) for name, n in counts.items()}


def faust_ceiling(env: dict[str, str], total: int, stepped: bool = False) -> dict[str, float]:
    """Records/s and CPU per record of a bare Faust agent over the same topics (``bench/faust_ceiling.py``);
    ``stepped``: with the worker's hand-over from Faust's consumer to its streams, named ``faust_stepped_*``."""
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("faust_ceiling.py")), "--prefix",
                          Settings.load(env).topic_prefix, "--records", str(total), "--partitions", str(PARTITIONS),
                          *(["--stepped-drain"] if stepped else [])],
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=600, check=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    return {k.replace("faust_", "faust_stepped_"): v for k, v in found.items()} if stepped else found


def rss_per_pending(env: dict[str, str], requests: int, tmp: Path) -> dict[str, float]:
    """RSS growth of a worker that closes no window, per pending request."""
    url = metrics_url(env)
    worker = Component("streams-rss", ["streams", "--window", "3600", "--lateness", "0"], tmp, env).start()
    try:
        worker.wait_http(url)
        time.sleep(3)
        before = scrape(url).total(RSS)
        report, _ = simulate(env, requests, 0)
        total = report["ranking"] + report["exposure"] + report["feedback"]
        worker.wait_metric(url, "hap_streams_events_total", total, timeout_s=600)
        time.sleep(2)
        m = scrape(url)
    finally:
        worker.stop()
    pending = m.total("hap_streams_pending_requests")
    grown = m.total(RSS) - before
    return {"rss_per_pending_kb": round(grown / max(pending, 1) / 1024, 1), "rss_pending_requests": pending,
            "rss_before_mb": round(before / 2**20, 1), "rss_after_mb": round((before + grown) / 2**20, 1)}


def lag(env: dict[str, str], requests: int, rate: float, tmp: Path) -> dict[str, float | None]:
    url = metrics_url(env)
    worker = Component("streams-lag", ["streams", *WINDOW], tmp, env).start()
    try:
        worker.wait_http(url)
        time.sleep(3)
        report, _ = simulate(env, requests, rate, LAG_EMITTERS)
        time.sleep(5)
        m = scrape(url)
    finally:
        worker.stop()
    name = "hap_streams_event_to_sample_seconds"
    return {"lag_p50_s": m.quantile(name, 0.5), "lag_p99_s": m.quantile(name, 0.99),
            "lag_rate_events_per_s": round(rate, 1), "lag_achieved_events_per_s": report["achieved_events_per_s"],
            "lag_sim_max_late_ms": round(report["max_late_ms"], 1), "lag_sim_pregenerate_s": report["pregenerate_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--py-spy", type=Path, help="profile the worker of the throughput run into this file")
    parser.add_argument("--parts", type=Path, help="print the parts of this earlier worker profile, and exit")
    parser.add_argument("--threads", action="store_true",
                        help="print the worker's CPU per event by thread (step 1), named by `py-spy dump`")
    parser.add_argument("--keep", type=Path, help="the workers' logs and data dirs go under this dir, kept")
    parser.add_argument("--throughput-only", action="store_true",
                        help="steps 1 and 2 only (the worker, the plain consumers, the join alone, the bare Faust "
                             "agent): no memory or lag run")
    parser.add_argument("--workers", type=lambda v: [int(n) for n in v.split(",")],
                        help="also run `hap streams --workers N` for each N on a backlog of its own (the same "
                             "simulated traffic), e.g. 1,2: events/s per N and the ratio to the first N")
    args = parser.parse_args()
    if args.parts:
        print(json.dumps(profile_parts(args.parts)))
        return
    s = Settings.load()
    with (contextlib.nullcontext(tempfile.mkdtemp(dir=args.keep)) if args.keep
          else tempfile.TemporaryDirectory()) as tmp_dir:
        tmp = Path(tmp_dir)
        if args.keep:
            print(f"logs and data under {tmp} (kept)", file=sys.stderr)
        env = settings_env(kafka_bootstrap=s.kafka_bootstrap, redis_url=s.redis_url, data_dir=tmp,
                           streams_metrics_port=free_port())
        fresh_topics(env, s.kafka_bootstrap, "s")
        report, _ = simulate(env, args.requests, 0)
        total = report["ranking"] + report["exposure"] + report["feedback"]
        rates = worker_rate(env, total, tmp, args.py_spy, threads=args.threads, settle=True)
        prefix = Settings.load(env).topic_prefix
        topics = [f"{prefix}{t}" for t in ("ranking", "exposure")]
        raw, raw_cpu = asyncio.run(consumer_rate(s.kafka_bootstrap, topics, total, decode=False))
        kept: list = []
        decoded, decode_cpu = asyncio.run(consumer_rate(s.kafka_bootstrap, topics, total, decode=True, keep=kept))
        in_process = join_in_process(kept, prefix)
        ceiling = faust_ceiling(env, total)
        stepped = faust_ceiling(env, total, stepped=True)
        memory: dict[str, float] = {}
        lags: dict[str, float | None] = {"lag_p99_s": None, "lag_rate_events_per_s": 0.0, "lag_sim_max_late_ms": 0.0}
        if not args.throughput_only:
            fresh_topics(env, s.kafka_bootstrap, "m")
            memory = rss_per_pending(env, max(200, args.requests // 2), tmp)
            rate = rates["events_per_s"] / 2
            per_request = total / report["ranking"]
            fresh_topics(env, s.kafka_bootstrap, "l")
            lags = lag(env, max(100, min(args.requests // 3, int(rate * LAG_S / per_request))), rate, tmp)
        if lags["lag_sim_max_late_ms"] > SIM_LATE_MS:
            print(f"lag: the simulator fell {lags['lag_sim_max_late_ms']:.0f} ms behind its schedule at "
                  f"{rate:.0f} events/s: the lag figure does not count", file=sys.stderr)
        scaling: dict[str, float] = {}
        if args.workers:  # one backlog, copied into the topics of each run
            fresh_topics(env, s.kafka_bootstrap, "wsrc")
            scaled_report, _ = simulate(env, args.requests, 0)
            source = Settings.load(env).topic_prefix
            source_records = asyncio.run(read_topics(s.kafka_bootstrap, [f"{source}{t}" for t in INPUTS]))
            scaled_total = scaled_report["ranking"] + scaled_report["exposure"] + scaled_report["feedback"]

            def copy_backlog() -> None:
                asyncio.run(copy_records(s.kafka_bootstrap, source_records, source, Settings.load(env).topic_prefix))

        for workers in args.workers or ():
            runs = {f"workers_{workers}": True}  # the group formed first, then the backlog
            if workers > 1:  # and on a backlog that is there first: the first to join takes every partition
                runs[f"workers_{workers}_started_on_backlog"] = False  # until the others join and it rebalances
            for name, form_first in runs.items():
                fresh_topics(env, s.kafka_bootstrap, name)
                if not form_first:
                    copy_backlog()
                scaled = worker_rate(env, scaled_total, tmp, None, workers,
                                     backlog=copy_backlog if form_first else None)
                scaling |= {f"{name}_{key}": round(scaled[key], 1)
                            for key in ("events_per_s", "formed_after_s", "backlog_s") if key in scaled}
                scaling[f"{name}_cpu_us_per_event"] = round(scaled["worker_cpu_us_per_event"], 1)
                print(f"{name}: {scaled['events_per_s']:.0f} events/s", file=sys.stderr)
        if args.workers and len(args.workers) > 1:
            base = scaling[f"workers_{args.workers[0]}_events_per_s"]
            for workers in args.workers[1:]:
                for name in (f"workers_{workers}", f"workers_{workers}_started_on_backlog"):
                    scaling[f"{name}_over_{args.workers[0]}"] = round(scaling[f"{name}_events_per_s"] / base, 3)
    if args.py_spy:
        from router_http import top_frames

        for frame, own, inclusive in top_frames(args.py_spy, 25):
            print(f"py-spy streams worker: self {own:5.1f}%  total {inclusive:5.1f}%  {frame}", file=sys.stderr)
        for part, share in profile_parts(args.py_spy).items():
            print(f"py-spy streams worker part: {share:5.1f}%  {part}", file=sys.stderr)
    window_s = 0.5
    print(json.dumps({
        **{k: round(v, 1) for k, v in rates.items()}, "raw_events_per_s": round(raw, 1),
        "decode_events_per_s": round(decoded, 1), "ratio": round(rates["events_per_s"] / raw, 3),
        "ratio_vs_decode": round(rates["events_per_s"] / decoded, 3), "events": total, "requests": report["ranking"],
        "raw_cpu_us_per_event": round(raw_cpu, 1), "decode_cpu_us_per_event": round(decode_cpu, 1),
        "cpu_ratio_vs_decode": round(decode_cpu / rates["worker_cpu_us_per_event"], 3),
        **ceiling, "faust_ratio": round(ceiling["faust_events_per_s"] / raw, 3),
        "faust_ratio_vs_decode": round(ceiling["faust_events_per_s"] / decoded, 3),
        "worker_vs_faust": round(rates["events_per_s"] / ceiling["faust_events_per_s"], 3),
        **stepped, "worker_vs_faust_stepped": round(rates["events_per_s"] / stepped["faust_stepped_events_per_s"], 3),
        **in_process, **memory, **lags, **scaling, "join_window_s": window_s,
        "lag_within_bound": lags["lag_p99_s"] is not None and lags["lag_p99_s"] <= window_s + 1.0,
        "lag_sim_on_schedule": lags["lag_sim_max_late_ms"] <= SIM_LATE_MS,
        "lag_at_half_worker_rate": lags["lag_rate_events_per_s"] >= round(rates["events_per_s"] / 2, 1),
        "load_average": os.getloadavg(),
    }))


if __name__ == "__main__":
    main()
