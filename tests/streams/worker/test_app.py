"""The streams worker on a real broker: groups match the simulator's ground truth; bad input and orphan
feedback to the DLQ, keyed by request id, with their reason kind; a late click corrects its group."""

import time

import orjson
from kafka import KafkaConsumer

from deploy.pipeline import Component
from streams.contract.schemas import ExposureEvent, decode_sample_group
from streams.join.assembler import group_id
from streams.kafka.producer import EventProducer

from ...conftest import read_topic, simulate, truth

WORKER = ["streams", "--window", "1", "--lateness", "0.5"]


def test_groups_match_ground_truth_bad_input_goes_to_dlq_late_clicks_correct(stack_env, kafka_bootstrap, tmp_path):
    report = simulate(stack_env, tmp_path, "--requests", "60", "--rate", "0", "--duplicate-rate", "0.05",
                      "--truth", str(tmp_path / "truth.jsonl"), "--feedback-delay", "0.2")
    orphan_rid = sorted(truth(tmp_path / "truth.jsonl"))[0]
    with EventProducer(kafka_bootstrap, topic_prefix=stack_env["HAP_TOPIC_PREFIX"]) as producer:
        producer.send_raw("ranking", "bad-1", b"{not json")
        producer.send_raw("exposure", "bad-2", orjson.dumps({"schema_version": 1, "type": "exposure"}))
        producer.send_exposure(ExposureEvent(orphan_rid, "u", "not-a-candidate", int(time.time() * 1000), "feedback",
                                             click=True))
    worker = Component("streams", WORKER, tmp_path, stack_env).start()
    try:
        groups = [decode_sample_group(v) for v in read_topic(kafka_bootstrap, stack_env["HAP_TOPIC_PREFIX"]
                                                             + "samples", report["requests"])]
        dlq = dead_letters(kafka_bootstrap, stack_env["HAP_TOPIC_PREFIX"] + "dlq", 3)
        rid, item = next((r, i) for r, labels in truth(tmp_path / "truth.jsonl").items()
                         for i, label in labels.items() if not label)
        with EventProducer(kafka_bootstrap, topic_prefix=stack_env["HAP_TOPIC_PREFIX"]) as producer:
            producer.send_exposure(ExposureEvent(rid, "u", item, int(time.time() * 1000), "feedback", click=True))
        fixes = [g for g in map(decode_sample_group, read_topic(kafka_bootstrap, stack_env["HAP_TOPIC_PREFIX"]
                                                                 + "samples", 10**6, timeout_s=15)) if g.correction]
    finally:
        worker.stop()
    original = next(g for g in groups if g.request_id == rid)
    assert [f.group_id for f in fixes] == [group_id(rid, 1)]  # the late click: one correction
    assert [i.item_id for i in fixes[0].items] == [i.item_id for i in original.items]
    assert {i.item_id for i in fixes[0].items if i.label} == {i.item_id for i in original.items if i.label} | {item}
    expected = truth(tmp_path / "truth.jsonl")
    assert sorted(g.request_id for g in groups) == sorted(expected)  # one group per request, duplicates joined
    for g in groups:
        assert g.group_id == group_id(g.request_id)
        labels = {i.item_id: i.label for i in g.items if i.source in ("exp_pos", "exp_neg")}
        assert labels == expected[g.request_id]  # no exposed positive labelled negative, and vice versa
        counts = {s: sum(i.source == s for i in g.items) for s in ("rn", "prn", "gn")}
        assert counts == {"rn": 10, "prn": 10, "gn": 2 * len(labels)}
    assert sorted((key, d["reason_kind"], d["reason"].split(":")[0]) for key, d in dlq) == [
        (b"bad-1", "json", "json"), (b"bad-2", "schema", "request_id"), (orphan_rid.encode(), "orphan", "orphan")]
    assert all(d["request_id"] == key.decode() and d["original"] for key, d in dlq)


def dead_letters(bootstrap: str, topic: str, expected: int, timeout_s: float = 60) -> list[tuple[bytes, dict]]:
    """(key, decoded value) of the first ``expected`` dead letters (fewer when none came for ``timeout_s``)."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=int(timeout_s * 1000), fetch_max_bytes=8 << 20,
                             max_partition_fetch_bytes=8 << 20)
    out = []
    for message in consumer:
        out.append((message.key, orjson.loads(message.value)))
        if len(out) >= expected:
            break
    consumer.close()
    return out


def test_a_log_without_categories_replays_through_the_worker_with_its_features(stack_env, kafka_bootstrap, tmp_path):
    """Issue 32: a MIND-layout log whose news.tsv gives no category (EB-NeRD's) replays as valid events,
    and the worker emits every request's group, its items carrying the user-by-item features."""
    data = tmp_path / "log"
    data.mkdir()
    rows = [f"{n}\tU{n % 2}\t5/18/2023 7:{n:02d}:00 AM\tN0\tN1-{n % 2} N2-0 N3-{1 - n % 2}" for n in range(6)]
    (data / "behaviors.tsv").write_text("\n".join(rows) + "\n")
    (data / "news.tsv").write_text("N1\t\t\tt\nN2\t\t\tt\nN3\t\t\tt\n")
    report = simulate(stack_env, tmp_path, "--dataset", str(data), "--requests", "6", "--rate", "100",
                      "--duplicate-rate", "0", "--feedback-delay", "0.05", "--candidates", "10")
    worker = Component("streams", WORKER, tmp_path, stack_env).start()
    try:
        groups = [decode_sample_group(v) for v in read_topic(kafka_bootstrap, stack_env["HAP_TOPIC_PREFIX"]
                                                             + "samples", report["requests"])]
    finally:
        worker.stop()
    assert report["requests"] == 6 and sorted(g.request_id for g in groups) == [f"mind-{n}" for n in range(6)]
    exposed = [i for g in groups for i in g.items if i.source in ("exp_pos", "exp_neg")]
    assert {i.content_type for i in exposed} == {"unknown"}
    assert all({"user_seen", "user_clicked", "in_history", "age_h", "exp_1d"} <= set(i.features) for i in exposed)
