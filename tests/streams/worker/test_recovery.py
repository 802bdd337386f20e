"""A streams worker SIGKILLed mid-stream and restarted on its own state directory loses no request, reads only
the changelog records past its RocksDB state; duplicates keep their group id."""

import time
from collections import Counter

from kafka import KafkaConsumer, TopicPartition

from deploy.pipeline import Component
from deploy.scrape import scrape
from streams.contract.schemas import decode_sample_group

from ...conftest import dead_letters_of, input_offsets, read_topic, simulate, truth


def test_sigkill_mid_stream_loses_no_request(stack_env, kafka_bootstrap, tmp_path):
    # the worker is killed once it consumed a first part of the backlog: pending requests in its tables,
    # groups emitted or not, offsets committed or not
    report = simulate(stack_env, tmp_path, "--requests", "400", "--rate", "0", "--truth",
                      str(tmp_path / "truth.jsonl"), "--feedback-delay", "0.2")
    args = ["streams", "--window", "1", "--lateness", "0.5"]
    url = f"http://127.0.0.1:{stack_env['HAP_STREAMS_METRICS_PORT']}/metrics"
    first = Component("streams", args, tmp_path, stack_env).start()
    first.wait_http(url)
    assert 500 <= first.wait_metric(url, "hap_streams_events_total", 500) < report["ranking"] + report["exposure"]
    first.kill()
    held = changelog_records(kafka_bootstrap, stack_env["HAP_TOPIC_PREFIX"])
    second = Component("streams", args, tmp_path, stack_env).start()
    try:
        second.wait_http(url)
        expected = set(truth(tmp_path / "truth.jsonl"))
        deadline = time.monotonic() + 150  # the second worker joins once the killed one's session expired
        while True:
            groups = [decode_sample_group(v) for v in read_topic(
                kafka_bootstrap, stack_env["HAP_TOPIC_PREFIX"] + "samples", 10**6, timeout_s=3)]
            if {g.request_id for g in groups} >= expected or time.monotonic() > deadline:
                break
        replayed = scrape(url).total("hap_streams_changelog_recovered_records_total")
    finally:
        second.stop()
    # on its own state directory (the same worker id and data dir): the tail past its RocksDB state, at most
    # the batch the kill interrupted between the changelog's acknowledgement and the store's write; in this
    # short run one batch's changelog records can be a third of them (156 of 520 seen in one run). On a slow
    # machine the kill after 500 events finds fewer records held: 15, 18 and 19 in three of nine runs (2026-12-07)
    # a worker on an empty dir replays all of them; its log says why it did (state removed, offsets read from)
    assert held > 10 and replayed < held / 2, (held, replayed, second.log_tail(80))
    missing = expected - {g.request_id for g in groups}
    if missing:  # say where they went: dead letters of theirs, and the worker's log
        raise AssertionError(f"{len(missing)} requests without a group: {sorted(missing)[:20]}; "
                             f"{dead_letters_of(kafka_bootstrap, stack_env['HAP_TOPIC_PREFIX'], missing)}; offsets: "
                             f"{input_offsets(kafka_bootstrap, stack_env['HAP_TOPIC_PREFIX'])}\n{second.log_tail()}")
    firsts = [g for g in groups if not g.correction]  # a late label's correction is a group of its own
    ids_per_request = {r: {g.group_id for g in firsts if g.request_id == r} for r in {g.request_id for g in firsts}}
    assert all(len(ids) == 1 for ids in ids_per_request.values())  # a re-emitted group keeps its id
    emitted = Counter(g.group_id for g in groups)
    assert max(emitted.values()) <= 2  # the at-least-once bound of one crash: at most one replay per group



def changelog_records(bootstrap: str, prefix: str) -> int:
    """Records the streams app's table changelogs hold (end minus log start, every partition)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        topics = [t for t in consumer.topics() if t.startswith(f"hap-streams-{prefix.rstrip('.')}-")
                  and t.endswith("-changelog")]
        parts = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        ends, starts = consumer.end_offsets(parts), consumer.beginning_offsets(parts)
        return sum(ends[tp] - starts[tp] for tp in parts)
    finally:
        consumer.close()
