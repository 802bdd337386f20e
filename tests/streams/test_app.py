"""The streams worker on a real broker: groups match the simulator's ground truth; bad input to the DLQ."""

import orjson

from deploy.pipeline import Component
from streams.assembler import group_id
from streams.schemas import decode_sample_group

from ..conftest import read_topic, simulate, truth

WORKER = ["streams", "--window", "1", "--lateness", "0.5"]


def test_groups_match_ground_truth_and_invalid_input_goes_to_dlq(stack_env, kafka_bootstrap, tmp_path):
    report = simulate(stack_env, tmp_path, "--requests", "60", "--rate", "0", "--duplicate-rate", "0.05",
                      "--truth", str(tmp_path / "truth.jsonl"), "--feedback-delay", "0.2")
    from streams.producer import EventProducer

    with EventProducer(kafka_bootstrap, topic_prefix=stack_env["HAP_TOPIC_PREFIX"]) as producer:
        producer.send_raw("ranking", "bad-1", b"{not json")
        producer.send_raw("exposure", "bad-2", orjson.dumps({"schema_version": 1, "type": "exposure"}))
    worker = Component("streams", WORKER, tmp_path, stack_env).start()
    try:
        groups = [decode_sample_group(v) for v in read_topic(kafka_bootstrap, stack_env["HAP_TOPIC_PREFIX"]
                                                             + "samples", report["requests"])]
        dlq = [orjson.loads(v) for v in read_topic(kafka_bootstrap, stack_env["HAP_TOPIC_PREFIX"] + "dlq", 2)]
    finally:
        worker.stop()
    expected = truth(tmp_path / "truth.jsonl")
    assert sorted(g.request_id for g in groups) == sorted(expected)  # one group per request, duplicates joined
    for g in groups:
        assert g.group_id == group_id(g.request_id)
        labels = {i.item_id: i.label for i in g.items if i.source in ("exp_pos", "exp_neg")}
        assert labels == expected[g.request_id]  # no exposed positive labelled negative, and vice versa
        counts = {s: sum(i.source == s for i in g.items) for s in ("rn", "prn", "gn")}
        assert counts == {"rn": 10, "prn": 10, "gn": 2 * len(labels)}
    reasons = sorted(d["reason"].split(":")[0] for d in dlq)
    assert reasons == ["json", "request_id"]
