"""Future event times through the real worker: an event far ahead of its arrival (a clock running
ahead, microseconds sent as milliseconds) is dead-lettered as ``future`` and poisons nothing: the
requests after it on the same partitions keep their exposures, none is dead-lettered as late, and
no group carries a future event time."""

import base64
import time

import orjson
from kafka import KafkaProducer

from deploy.pipeline import Component
from streams.contract.schemas import Candidate, ExposureEvent, RankingEvent, decode_sample_group, encode
from streams.kafka.producer import EventProducer

from ...conftest import read_topic
from .test_app import dead_letters

PARTITIONS = 4
AHEAD_MS = 35_000
REQUESTS = 12


def _ranking(rid: str, ts_ms: int) -> RankingEvent:
    return RankingEvent(rid, f"u-{rid}", ts_ms, [Candidate(f"{rid}-i{j}", "hot", j, 1.0 - j / 10, j, 0.5, "video")
                                                 for j in range(5)])


def test_a_future_event_is_dead_lettered_and_poisons_no_partition(stack_env, kafka_bootstrap, tmp_path):
    prefix = stack_env["HAP_TOPIC_PREFIX"]
    url = f"http://127.0.0.1:{stack_env['HAP_STREAMS_METRICS_PORT']}/metrics"
    worker = Component("streams", ["streams", "--window", "5", "--lateness", "1", "--max-future", "10"], tmp_path,
                       stack_env).start()
    try:
        worker.wait_http(url)
        # one poisoned event on every partition: two ranking events and two exposures, 35 s ahead
        raw = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        ahead = int(time.time() * 1000) + AHEAD_MS
        for p in range(PARTITIONS):
            rid = f"poison-{p}"
            event = _ranking(rid, ahead) if p < 2 else ExposureEvent(rid, "u", f"{rid}-i0", ahead, "exposure", 0)
            raw.send(prefix + ("ranking" if p < 2 else "exposure"), key=rid.encode(), value=encode(event),
                     partition=p)
        raw.flush()
        raw.close()
        assert worker.wait_metric(url, "hap_streams_events_total", PARTITIONS) >= PARTITIONS, worker.log_tail()
        now = int(time.time() * 1000)
        with EventProducer(kafka_bootstrap, topic_prefix=prefix) as producer:
            for r in range(REQUESTS):
                producer.send_ranking(_ranking(f"req-{r}", now))
        time.sleep(2.0)  # ticks run: a poisoned watermark closes these windows now, before their exposures
        with EventProducer(kafka_bootstrap, topic_prefix=prefix) as producer:
            for r in range(REQUESTS):
                for pos in range(2):
                    producer.send_exposure(ExposureEvent(f"req-{r}", f"u-req-{r}", f"req-{r}-i{pos}", now + 100,
                                                         "exposure", pos))
                producer.send_exposure(ExposureEvent(f"req-{r}", f"u-req-{r}", f"req-{r}-i0", now + 300, "feedback",
                                                     click=True))
        groups = [decode_sample_group(v) for v in read_topic(kafka_bootstrap, prefix + "samples", REQUESTS,
                                                             timeout_s=60)]
        dlq = dead_letters(kafka_bootstrap, prefix + "dlq", 10**6, timeout_s=3)
    finally:
        worker.stop()
    assert sorted((d["reason_kind"], key) for key, d in dlq) == [("future", f"poison-{p}".encode())
                                                                for p in range(PARTITIONS)]
    assert all(d["reason"].startswith("ts_ms: ") and orjson.loads(base64.b64decode(d["original"]))
               ["request_id"] == key.decode() for key, d in dlq)
    assert sorted(g.request_id for g in groups) == sorted(f"req-{r}" for r in range(REQUESTS))
    for g in groups:  # every request kept its exposures and its click
        assert {i.item_id: i.label for i in g.items if i.source in ("exp_pos", "exp_neg")} == {
            f"{g.request_id}-i0": 1, f"{g.request_id}-i1": 0}, g
        assert g.event_ts_ms == now
