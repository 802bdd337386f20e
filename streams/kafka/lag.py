"""Consumer lag of a group, from the broker: per partition, the log-end offset minus the group's
committed offset (no commit yet: minus the log start, every record the group has still to read).

The broker is asked, not a consumer's own view, so the figure holds for the whole group however
its partitions are spread over workers, and a worker whose consumer stopped fetching (or died) still
shows in what the others export. Every streams worker exports its group's lag on its inputs
(``hap_streams_consumer_lag_records{group, topic, partition}``, :func:`streams.metrics.export_lag`);
a dashboard takes the ``max`` over workers.

Examples
--------
>>> lag({("t", 0): 120, ("t", 1): 7}, {("t", 0): 100}, {("t", 0): 0, ("t", 1): 2})
{('t', 0): 20, ('t', 1): 5}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import OffsetSpec

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
