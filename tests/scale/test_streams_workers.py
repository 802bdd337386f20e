"""Two streams workers in one group over four partitions: each reads the whole catalogue (not only
its partitions of ``items``); one is SIGKILLed mid-stream and the other takes its partitions over:
every request of the ground truth gets its group, a replayed group keeps its id, and the learner
trains every distinct group exactly once."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from deploy.pipeline import Component
from deploy.scrape import scrape
from deploy.stack.process import free_port
from streams.contract.schemas import decode_sample_group
from streams.kafka.topics import ensure_topics

from ..conftest import dead_letters_of, input_offsets, read_topic, trained_exactly_once, truth

PARTITIONS = 4
STREAMS = ["streams", "--window", "1", "--lateness", "0.5"]
LEARNER = ["learner", "--batch-groups", "8", "--publish-interval", "1", "--checkpoint-interval", "1"]


@pytest.fixture
def four_partitions(kafka_bootstrap: str, topic_prefix: str) -> int:
    """The pipeline's topics of this test, four partitions each (before ``stack_env`` makes the default)."""
    ensure_topics(kafka_bootstrap, topic_prefix, partitions=PARTITIONS)
    return PARTITIONS


def _rss_mb(component: Component) -> float:
    """Resident memory of the component's worker process (the supervisor's child), in MB."""
    assert component.proc is not None
    pid = next(iter(component.children()), component.proc.pid)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_two_workers_see_the_whole_catalogue_and_one_sigkilled_loses_no_request(four_partitions, stack_env,
                                                                                  kafka_bootstrap, tmp_path):
    env = {**stack_env, "HAP_KAFKA_PARTITIONS": str(four_partitions), "HAP_STREAMS_STATIC_MEMBERSHIP": "true"}
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{port}/metrics" for port in ports]
    workers = [Component("streams", [*STREAMS, "--worker-id", f"w{i}", "--metrics-port", str(port)],
                         tmp_path / f"w{i}", env) for i, port in enumerate(ports)]
    learner = Component("learner", LEARNER, tmp_path, env)
    sim = Component("simulate", ["simulate", "--no-progress", "--requests", "600", "--rate", "500", "--items", "2000",
                                 "--candidates", "200", "--feedback-delay", "0.2", "--truth",
                                 str(tmp_path / "truth.jsonl")], tmp_path, env)
    try:
        for worker, url in zip(workers, urls, strict=True):
            worker.start().wait_http(url)
        learner.start()
        sim.start()
        # both take part: each has joined events of its own partitions, and read every partition of items
        for worker, url in zip(workers, urls, strict=True):
            assert worker.wait_metric(url, "hap_streams_events_total", 200, timeout_s=120) >= 200, worker.log_tail()
            assert worker.wait_metric(url, "hap_streams_catalogue_records_total", 2000) >= 2000, worker.log_tail()
        held = [scrape(url).total("hap_streams_assigned_partitions", topic="ranking") for url in urls]
        assert min(held) > 0 and sum(held) == four_partitions, held  # the ranking partitions split between them
        rss = [_rss_mb(w) for w in workers]
        workers[0].kill()  # mid-stream: the simulator goes on for seconds, the survivor takes the partitions over
        assert sim.proc is not None and sim.proc.wait(180) == 0, sim.log_tail()
        expected = set(truth(tmp_path / "truth.jsonl"))
        deadline = time.monotonic() + 150
        while True:
            groups = [decode_sample_group(v) for v in read_topic(
                kafka_bootstrap, stack_env["HAP_TOPIC_PREFIX"] + "samples", 10**6, timeout_s=3)]
            if {g.request_id for g in groups} >= expected or time.monotonic() > deadline:
                break
        missing = expected - {g.request_id for g in groups}
        assert not missing, (f"{len(missing)} requests without a group: {sorted(missing)[:20]}; "
                             f"{dead_letters_of(kafka_bootstrap, stack_env['HAP_TOPIC_PREFIX'], missing)}; offsets: "
                             f"{input_offsets(kafka_bootstrap, stack_env['HAP_TOPIC_PREFIX'])}\n"
                             f"{workers[1].log_tail()}")
        firsts = [g for g in groups if not g.correction]
        ids = {r: {g.group_id for g in firsts if g.request_id == r} for r in expected}
        assert all(len(i) == 1 for i in ids.values())  # a group replayed by the survivor keeps its id
        assert max(Counter(g.group_id for g in groups).values()) <= 2  # one crash: at most one replay per group
        restarts = scrape(urls[1]).total("hap_streams_worker_restarts_total")  # a stuck partition replaces a worker
        trained_exactly_once(learner, f"http://127.0.0.1:{env['HAP_LEARNER_METRICS_PORT']}/metrics",
                             tmp_path / "data", groups)
        print(f"worker RSS before the kill: {rss[0]:.0f} and {rss[1]:.0f} MB; "
              f"after the takeover: {_rss_mb(workers[1]):.0f} MB; the survivor restarted {restarts:.0f} times")
    finally:
        for part in (sim, learner, *workers):
            part.stop()
