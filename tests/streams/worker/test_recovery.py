"""A streams worker SIGKILLed mid-stream and restarted loses no request; duplicates keep their group id."""

import time
from collections import Counter

from deploy.pipeline import Component
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
    second = Component("streams", args, tmp_path, stack_env).start()
    try:
        expected = set(truth(tmp_path / "truth.jsonl"))
        deadline = time.monotonic() + 150  # the second worker joins once the killed one's session expired
        while True:
            groups = [decode_sample_group(v) for v in read_topic(
                kafka_bootstrap, stack_env["HAP_TOPIC_PREFIX"] + "samples", 10**6, timeout_s=3)]
            if {g.request_id for g in groups} >= expected or time.monotonic() > deadline:
                break
    finally:
        second.stop()
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

