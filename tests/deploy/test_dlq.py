"""`hap dlq` over a real broker: dead letters as the worker writes them are listed, shown and
replayed; a replay re-sends the original bytes, whole, to the original topic under the contract's
key, and a letter without its whole original is refused, not half-sent."""

import os
import subprocess
import sys

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streams.contract.dlq import DeadLetter
from streams.contract.fields import DLQ_ORIGINAL_BYTES

CODE = "import sys; from deploy.cli import main; sys.exit(main())"


def hap(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CODE, "dlq", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def records(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=3000)
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    if not parts:  # never written
        consumer.close()
        return []
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    out = [(m.key, m.value) for m in consumer]
    consumer.close()
    return out


def test_list_show_and_replay_dead_letters(kafka_bootstrap, topic_prefix, tmp_path):
    ranking = orjson.dumps({"schema_version": 1, "request_id": "r-7", "user_id": "u", "ts_ms": 5, "candidates": []})
    item = b'{"schema_version": 1, "item_id": "item-3", "content_type": "video", "ts_ms": "late"}'
    letters = [
        DeadLetter("schema", "candidates: expected 1..5000 entries", "r-7", f"{topic_prefix}ranking", 2, 41, ranking),
        DeadLetter("schema", "ts_ms: expected int, got str", None, f"{topic_prefix}items", 0, 9, item),
        DeadLetter("json", "json: unexpected end", "r-8", f"{topic_prefix}exposure", 1, 3,
                   b"x" * (DLQ_ORIGINAL_BYTES + 1)),
        DeadLetter("orphan", "orphan: no ranking event", "r-9", None, None, None, None),
    ]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for letter in letters:
        producer.send(f"{topic_prefix}dlq", key=letter.key(), value=letter.value(), partition=0)
    producer.flush()
    producer.close()
    env = {**os.environ, "HAP_KAFKA_BOOTSTRAP": kafka_bootstrap, "HAP_TOPIC_PREFIX": topic_prefix,
           "HAP_DATA_DIR": str(tmp_path)}

    listed = hap(env, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [orjson.loads(line) for line in listed.stdout.splitlines()]
    assert [r["id"] for r in rows] == ["0:0", "0:1", "0:2", "0:3"]
    assert [r["reason_kind"] for r in rows] == ["schema", "schema", "json", "orphan"]
    only = hap(env, "list", "--kind", "schema", "--topic", f"{topic_prefix}items")
    assert only.stdout.count("\n") == 1 and "ts_ms: expected int, got str" in only.stdout

    shown = hap(env, "show", "0:0")
    assert shown.returncode == 0 and orjson.loads(shown.stdout)["original"] == ranking.decode()

    replayed = hap(env, "replay", "0:0", "0:1")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert records(kafka_bootstrap, f"{topic_prefix}ranking") == [(b"r-7", ranking)]
    assert records(kafka_bootstrap, f"{topic_prefix}items") == [(b"item-3", item)]  # items are keyed by item_id

    refused = hap(env, "replay", "--all", "--kind", "json")
    assert refused.returncode == 1 and "only the first bytes of the original were kept" in refused.stdout
    orphan = hap(env, "replay", "0:3")
    assert orphan.returncode == 1 and "0:3: not replayed: no original topic (orphan)" in orphan.stdout
    assert records(kafka_bootstrap, f"{topic_prefix}exposure") == []
    assert hap(env, "show", "7:7").returncode == 1
