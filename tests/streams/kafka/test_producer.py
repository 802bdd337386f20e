"""The producer SDK: acknowledged delivery with metrics, and a clear error without a broker."""

import pytest
from prometheus_client import REGISTRY

from deploy.stack.process import free_port
from streams.contract.schemas import ExposureEvent, decode_exposure
from streams.kafka.producer import EventProducer, ProducerUnavailable

from ...conftest import read_topic


def test_events_are_acknowledged_and_counted(kafka_bootstrap, topic_prefix):
    topic = f"{topic_prefix}exposure"
    before = REGISTRY.get_sample_value("hap_producer_sent_total", {"topic": topic}) or 0
    with EventProducer(kafka_bootstrap, topic_prefix=topic_prefix) as producer:
        for i in range(50):
            producer.send_exposure(ExposureEvent(f"r{i}", "u", f"i{i}", 1, "exposure", position=0))
    assert REGISTRY.get_sample_value("hap_producer_sent_total", {"topic": topic}) - before == 50
    assert producer.failed == 0
    got = sorted(decode_exposure(v).request_id for v in read_topic(kafka_bootstrap, topic, 50))
    assert got == sorted(f"r{i}" for i in range(50))


def test_unreachable_broker_is_a_clear_error():
    with pytest.raises(ProducerUnavailable, match="no Kafka broker answers at 127.0.0.1:"):
        EventProducer(f"127.0.0.1:{free_port()}", bootstrap_timeout_ms=3_000)  # kafka-python's default: 30 s


def test_a_refused_event_raises_and_sends_nothing(kafka_bootstrap, topic_prefix):
    from streams.kafka.producer import InvalidEvent

    topic = f"{topic_prefix}exposure"
    with EventProducer(kafka_bootstrap, topic_prefix=topic_prefix) as producer:
        with pytest.raises(InvalidEvent) as refused:
            producer.send_exposure(ExposureEvent("r-bad", "u", "i", 1, "exposure"))  # no position
        producer.send_exposure(ExposureEvent("r-ok", "u", "i", 1, "exposure", position=0))
    assert refused.value.field == "position"
    delivered = read_topic(kafka_bootstrap, topic, 2, timeout_s=5)  # waits for a second record that never comes
    assert [decode_exposure(v).request_id for v in delivered] == ["r-ok"]
    assert REGISTRY.get_sample_value("hap_producer_sent_total", {"topic": topic}) >= 1
