"""Big records through the real broker are not lost: a 900 KB malformed event reaches the DLQ as a
bounded record (the first 256 KiB, the original's size and SHA-256), and a valid ranking event near
the 1 MiB cap whose item ids are mostly quotes (escaped in every JSON copy) reaches its table's
changelog as the join keeps it, so that a restarted worker still has it."""

import base64
import hashlib
import time

import orjson
from kafka import KafkaConsumer

from deploy.pipeline import Component
from streams.contract.fields import DLQ_ORIGINAL_BYTES
from streams.contract.schemas import Candidate, ExposureEvent, RankingColumns, RankingEvent, decode_sample_group, encode
from streams.kafka.producer import EventProducer

from ...conftest import read_topic
from .test_app import dead_letters


def _quoted_ranking(rid: str, ts_ms: int, n: int = 2000) -> RankingEvent:
    """A valid ranking event under 1 MiB whose item ids are mostly quotes (each escaped in JSON)."""
    return RankingEvent(rid, "u", ts_ms, [Candidate(f"{i}" + '"' * 120, "hot", i, 0.5, i, 0.5, "video")
                                          for i in range(n)])


def test_a_900kb_malformed_event_and_a_big_valid_one_are_not_lost(stack_env, kafka_bootstrap, tmp_path):
    prefix = stack_env["HAP_TOPIC_PREFIX"]
    malformed = b'{"schema_version": 1, "request_id": "big-bad", "junk": "' + b"x" * 900_000  # unterminated
    now = int(time.time() * 1000)
    big = _quoted_ranking("big-ok", now)
    raw = encode(big)
    assert 700_000 < len(raw) < 1 << 20  # valid input, near the cap
    with EventProducer(kafka_bootstrap, topic_prefix=prefix) as producer:
        producer.send_raw("ranking", "big-bad", malformed)
        producer.send_ranking(big)
        producer.send_exposure(ExposureEvent("big-ok", "u", big.candidates[0].item_id, now + 50, "exposure", 0))
    worker = Component("streams", ["streams", "--window", "1", "--lateness", "0.5"], tmp_path, stack_env).start()
    try:
        groups = [decode_sample_group(v) for v in read_topic(kafka_bootstrap, prefix + "samples", 1)]
        dlq = dead_letters(kafka_bootstrap, prefix + "dlq", 1, timeout_s=20)
    finally:
        worker.stop()
    assert [g.request_id for g in groups] == ["big-ok"]
    assert [(key, d["reason_kind"]) for key, d in dlq] == [(b"big-bad", "json")], worker.log_tail()
    d = dlq[0][1]
    assert d["original_size"] == len(malformed) and d["original_truncated"] is True
    assert d["original_sha256"] == hashlib.sha256(malformed).hexdigest()
    assert base64.b64decode(d["original"]) == malformed[:DLQ_ORIGINAL_BYTES]
    assert d["offset"] == 0 and d["topic"] == prefix + "ranking"
    changelog = f"hap-streams-{prefix.rstrip('.')}-rankings-changelog"
    consumer = KafkaConsumer(changelog, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=5000)
    copies = [m.value for m in consumer if m.key == b'"big-ok"' and m.value is not None]
    consumer.close()
    assert len(copies) == 1 and RankingColumns.of(orjson.loads(copies[0])) == RankingColumns.of(big)  # for a restart
