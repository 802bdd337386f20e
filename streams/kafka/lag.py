"""Consumer lag of a group, from the broker: per partition, the log-end offset minus the group's
committed offset (no commit yet: minus the log start, every record the group has still to read).

The broker is asked, not a consumer's own view, so the figure holds for the whole group however
its partitions are spread over workers, and a worker whose consumer stopped fetching (or died) still
shows in what the others export. Every streams worker exports its group's lag on its inputs
(``hap_streams_consumer_lag_records{group, topic, partition}``, read on a Faust timer), the learner
its group's on the samples topic (``hap_learner_consumer_lag_records``, read by a
:class:`LagReporter` thread), each through a :class:`LagGauge`; a dashboard takes the ``max`` over
workers.

Examples
--------
>>> lag({("t", 0): 120, ("t", 1): 7}, {("t", 0): 100}, {("t", 0): 0, ("t", 1): 2})
{('t', 0): 20, ('t', 1): 5}
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence

from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import OffsetSpec
from prometheus_client import Gauge

from streams.kafka.security import PLAINTEXT, KafkaSecurity

#: (topic, partition)
Partition = tuple[str, int]


def lag(ends: Mapping[Partition, int], committed: Mapping[Partition, int],
        starts: Mapping[Partition, int]) -> dict[Partition, int]:
    """Per partition of ``ends``: its end minus the committed offset, else minus its start (never below 0)."""
    return {tp: max(0, end - committed.get(tp, starts.get(tp, 0))) for tp, end in ends.items()}


class GroupLag:
    """Reads the lag of ``group_id`` on every partition of ``topics`` (blocking: call it off the event
    loop). One admin connection, kept between reads; :meth:`close` it."""

    def __init__(self, bootstrap: str, group_id: str, topics: Sequence[str], security: KafkaSecurity = PLAINTEXT,
                 timeout_ms: int = 10_000) -> None:
        self.group_id, self.topics = group_id, list(topics)
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms,
                                      **security.client_options())

    def read(self) -> dict[Partition, int]:
        """The group's lag per ``(topic, partition)`` of its topics; raises ``kafka.errors.KafkaError``."""
        partitions = [TopicPartition(t["name"], p["partition_index"]) for t in self.admin.describe_topics(self.topics)
                      for p in t["partitions"]]
        if not partitions:
            return {}
        offsets = self.admin.list_group_offsets({self.group_id: partitions})[self.group_id]
        committed = {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
        ends = self.admin.list_partition_offsets(dict.fromkeys(partitions, OffsetSpec.LATEST))
        new = [tp for tp in partitions if (tp.topic, tp.partition) not in committed]
        starts = self.admin.list_partition_offsets(dict.fromkeys(new, OffsetSpec.EARLIEST)) if new else {}
        return lag({(tp.topic, tp.partition): o.offset for tp, o in ends.items()}, committed,
                   {(tp.topic, tp.partition): o.offset for tp, o in starts.items()})

    def close(self) -> None:
        self.admin.close()


class LagGauge:
    """A Prometheus gauge of lag by ``group``, ``topic`` and ``partition``: :meth:`set` exports a read,
    and removes the partitions of the group it no longer reports (a topic deleted)."""

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self.exported: set[tuple[str, str, str]] = set()

    def set(self, group: str, lags: Mapping[Partition, int]) -> None:
        wanted = {(group, topic, str(partition)): value for (topic, partition), value in lags.items()}
        for labels in [labels for labels in self.exported if labels[0] == group and labels not in wanted]:
            self.gauge.remove(*labels)
            self.exported.discard(labels)
        for labels, value in wanted.items():
            self.gauge.labels(*labels).set(value)
            self.exported.add(labels)


class LagReporter(threading.Thread):
    """Every ``every_s``, reads ``group_id``'s lag on ``topics`` (:class:`GroupLag`) and sets ``gauge``,
    on a daemon thread of its own; a failed read is logged and retried at the next (the last values
    stay). :meth:`close` stops it and its connection."""

    def __init__(self, bootstrap: str, group_id: str, topics: Sequence[str], gauge: LagGauge,
                 security: KafkaSecurity = PLAINTEXT, every_s: float = 5.0) -> None:
        super().__init__(name="hap-consumer-lag", daemon=True)
        self.args = (bootstrap, group_id, topics, security)
        self.gauge, self.every_s = gauge, every_s
        self.stopping = threading.Event()

    def run(self) -> None:
        reader = None
        try:
            while not self.stopping.wait(self.every_s):
                try:
                    reader = reader or GroupLag(*self.args)
                    self.gauge.set(reader.group_id, reader.read())
                except Exception as exc:  # noqa: BLE001 - a metric never stops its component
                    logging.getLogger("hap.kafka").warning("the consumer lag of %s could not be read: %r",
                                                           self.args[1], exc)
        finally:
            if reader is not None:
                reader.close()

    def close(self, timeout_s: float = 15.0) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout_s)
