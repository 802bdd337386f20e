"""Dead letters are counted by the topic of the rejected input as well as by kind."""

import orjson
from prometheus_client import REGISTRY

from streams import metrics
from streams.contract.schemas import encode

from .test_joiner import T0, Harness, shown


def count(topic: str, kind: str) -> float:
    return REGISTRY.get_sample_value("hap_streams_invalid_total", {"topic": topic, "reason_kind": kind}) or 0.0


def test_dead_letters_are_counted_per_topic_and_kind():
    # a topic no other test counts (the registry is the process's, shared with the tests before this one)
    metrics.export_invalid(["exported-only.ranking", "hap.ranking", "hap.exposure"])
    assert REGISTRY.get_sample_value("hap_streams_invalid_total",
                                     {"topic": "exported-only.ranking", "reason_kind": "late"}) == 0
    before = {(t, k): count(t, k) for t in ("hap.ranking", "hap.exposure") for k in ("json", "schema", "future")}
    h = Harness()
    h.run(h.record("ranking", b"{not json", b"bad-1"),
          h.record("exposure", orjson.dumps({"schema_version": 1, "type": "exposure"}), b"bad-2"),
          h.record("exposure", b"{not json either", b"bad-3"),
          h.record("exposure", orjson.dumps({"schema_version": 1, "type": "exposure"}) + b" ", b"bad-4"))
    h.run(h.record("exposure", encode(shown("r9", "c0", 0, ts=T0 + 60_000)), b"r9"))
    after = {key: count(*key) - value for key, value in before.items()}
    assert after == {("hap.ranking", "json"): 1, ("hap.ranking", "schema"): 0, ("hap.ranking", "future"): 0,
                     ("hap.exposure", "json"): 1, ("hap.exposure", "schema"): 2, ("hap.exposure", "future"): 1}
