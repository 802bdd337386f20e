"""Create the pipeline's topics up front, with one partition count, so that the co-partitioned
join sees every topic from its first poll (a topic created later is ignored until a rebalance).

Partitions are chosen once: ``ranking``, ``exposure`` and ``streams-ticks`` are joined by
``request_id`` and must have the same count, and so must the worker's tables' changelogs (a
table's partition is its input's). Kafka can add partitions to a topic but never moves existing
keys, so raising the count of a keyed topic or a changelog later splits its requests between
partitions: it needs new topics (a new prefix), not an alteration. Replication (how many brokers
hold each partition, and how many must have a record before the producer's ``acks=all`` is
answered) is :class:`Replication`, the same for every topic, changelogs included.

Size limits are set here, consistently with the producers (:func:`record_limits`): an input
topic takes a record of the contract's cap (1 MiB) plus its key and framing; the topics the
worker writes (samples, dead letters, its tables' changelogs) take twice the cap plus that, since
a table keeps a valid input's bytes as a JSON string (every byte escaped at worst). A record the
broker refused would be lost (Faust only logs a failed send), so nothing the worker writes may
exceed what its topic takes.

The streams worker's internal topics (its tables' changelogs and Faust's leader topic) are
created the same way before the worker starts: left to Faust, they are created while its
consumer already runs, and a changelog seen before its partitions have leaders reads as having
0 partitions, which fails every table write (``PartitionsMismatch``) and can wedge the worker.

>>> specs = pipeline_topics("hap.", 4, Replication(3, 2))
>>> specs["hap.samples"].partitions, specs["hap.samples"].replicas, specs["hap.samples"].config["min.insync.replicas"]
(4, 3, '2')
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import NamedTuple

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic
from kafka.errors import InvalidReplicationFactorError, KafkaError, NoError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from streams.contract.fields import Limits
from streams.kafka.security import PLAINTEXT, KafkaSecurity

TOPICS = ("ranking", "exposure", "items", "samples", "dlq", "streams-ticks")
INPUTS = ("ranking", "exposure", "items")
COMPACTED = {"cleanup.policy": "compact"}
#: a record's key, headers and batch framing on top of its value
RECORD_OVERHEAD_BYTES = 64 * 1024
#: partitions of every pipeline topic and changelog unless the settings say otherwise
DEFAULT_PARTITIONS = 4


DEFAULT_LIMITS = Limits()


@dataclasses.dataclass(frozen=True, slots=True)
class Replication:
    """``factor`` brokers hold each partition; a write is acknowledged (``acks=all``) once
    ``min_insync`` of them have it, so a topic keeps taking writes with ``factor - min_insync``
    brokers down and loses no acknowledged record while fewer than ``min_insync`` are lost.

    >>> Replication.for_brokers(1), Replication.for_brokers(3)
    (Replication(factor=1, min_insync=1), Replication(factor=3, min_insync=2))
    """

    factor: int = 1
    min_insync: int = 1

    def __post_init__(self) -> None:
        if self.factor < 1:
            raise ValueError(f"the replication factor must be at least 1, got {self.factor}")
        if not 1 <= self.min_insync <= self.factor:
            raise ValueError(f"min.insync.replicas must be between 1 and the replication factor ({self.factor}), "
                             f"got {self.min_insync}")

    @classmethod
    def for_brokers(cls, brokers: int) -> Replication:
        """What a cluster of ``brokers`` holds: a factor of up to 3, one replica allowed down (1/1, 2/1, 3/2)."""
        factor = min(3, max(1, brokers))
        return cls(factor, max(1, factor - 1))

    def config(self) -> dict[str, str]:
        """The topic configuration it sets."""
        return {"min.insync.replicas": str(self.min_insync)}


class TopicSpec(NamedTuple):
    """How one topic is created: its partitions, its replication factor and its configuration."""

    partitions: int
    replicas: int
    config: dict[str, str]


Specs = dict[str, TopicSpec]  # topic name -> spec


def record_limits(limits: Limits = DEFAULT_LIMITS) -> tuple[int, int]:
    """(bytes an input topic and its producers take, bytes the worker's output topics and producer take)."""
    return (limits.max_message_bytes + RECORD_OVERHEAD_BYTES,
            2 * limits.max_message_bytes + RECORD_OVERHEAD_BYTES)


def _spec(partitions: int, replication: Replication, max_bytes: int | None = None,
          config: dict[str, str] | None = None) -> TopicSpec:
    sized = {"max.message.bytes": str(max_bytes)} if max_bytes else {}
    return TopicSpec(partitions, replication.factor, {**(config or {}), **sized, **replication.config()})


def pipeline_topics(prefix: str = "hap.", partitions: int = DEFAULT_PARTITIONS,
                    replication: Replication = Replication()) -> Specs:
    """The input, output and internal topics every component shares, with their size limits."""
    inputs, outputs = record_limits()
    return {f"{prefix}{t}": _spec(partitions, replication, inputs if t in INPUTS else outputs) for t in TOPICS}


def worker_topics(app_id: str, tables: list[str], partitions: int = DEFAULT_PARTITIONS,
                  replication: Replication = Replication()) -> Specs:
    """The changelogs of ``tables`` (sized for the worker's records), the leader topic of the Faust app ``app_id``."""
    topics = {f"{app_id}-{table}-changelog": _spec(partitions, replication, record_limits()[1], COMPACTED)
              for table in tables}
    topics[f"{app_id}-__assignor-__leader"] = _spec(1, replication)
    return topics


def ensure_topics(bootstrap: str, prefix: str = "hap.", partitions: int = DEFAULT_PARTITIONS,
                  security: KafkaSecurity = PLAINTEXT, replication: Replication = Replication()) -> list[str]:
    """Create the missing pipeline topics; returns the names created. Existing topics are left as they are."""
    return create_missing(bootstrap, pipeline_topics(prefix, partitions, replication), security)


def create_missing(bootstrap: str, topics: Specs, security: KafkaSecurity = PLAINTEXT,
                   timeout_s: float = 30.0) -> list[str]:
    """Create those of ``topics`` that are missing and wait until every partition of each has a
    leader; returns the names created. A replication factor above the cluster's brokers is a
    :class:`ValueError` naming both."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000, **security.client_options())
    try:
        existing = set(admin.list_topics())
        missing = [name for name in topics if name not in existing]
        if missing:
            try:
                admin.create_topics([NewTopic(name, topics[name].partitions, topics[name].replicas,
                                              topic_configs=topics[name].config) for name in missing])
            except TopicAlreadyExistsError:
                pass  # created concurrently by another worker
            except InvalidReplicationFactorError:
                brokers = len([b for b in admin.describe_cluster()["brokers"] if not b.get("is_fenced")])
                factor = max(topics[name].replicas for name in missing)
                raise ValueError(f"replication factor {factor} needs {factor} brokers; the cluster at {bootstrap} "
                                 f"has {brokers}: lower the replication factor") from None
        _wait_for_leaders(admin, topics, timeout_s)
        return missing
    finally:
        admin.close()


def _wait_for_leaders(admin: KafkaAdminClient, topics: Specs, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        described = {t["name"]: t for t in admin.describe_topics(list(topics))}
        waiting = [name for name, spec in topics.items()
                   if len([p for p in described.get(name, {}).get("partitions", []) if p["leader_id"] >= 0])
                   < spec.partitions]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics without leaders after {timeout_s:.0f}s: {', '.join(waiting)}")
        time.sleep(0.2)


class Deleted(NamedTuple):
    """Offsets ``first``-``last`` of an input partition that retention deleted before the group read them."""

    topic: str
    partition: int
    first: int
    last: int
    moved: bool  #: whether the group's committed offset was moved to the log start (else it was busy)


def resume_at_log_start(bootstrap: str, group_id: str, topics: list[str], security: KafkaSecurity = PLAINTEXT,
                        wait_s: float = 20.0) -> list[Deleted]:
    """Move the committed offsets of ``group_id`` that lie below the log start of their partition of
    ``topics`` (the group was away longer than the topic keeps records, or ``delete_records``) to the
    log start, before the group's consumer starts; returns what was deleted unread, per partition.

    Left to the consumer, such an offset takes aiokafka's offset-out-of-range reset, which races with
    Faust's seeks to the committed offsets (``reset_to`` asserts a reset that a seek cancelled): in
    ``tests/streams/worker/test_retention.py`` a partition then delivered nothing more, or its first
    record was left out. Kafka takes the move only while the group has no live member: it is retried
    for ``wait_s`` (a member that just stopped or crashed leaves within the session timeout); past
    that ``moved`` is False and the worker's consumer counts the gap when it resumes
    (``streams.worker.app.InputLag``). A broker that cannot answer (a group never seen yet) moves nothing."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000, **security.client_options())
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=15_000, **security.client_options())
    try:
        committed = {tp: meta.offset for tp, meta in admin.list_group_offsets(group_id)[group_id].items()
                     if tp.topic in topics and meta.offset >= 0}
        starts = consumer.beginning_offsets(list(committed)) if committed else {}
        behind = {tp: starts[tp] for tp, offset in committed.items() if offset < starts[tp]}
        moved: set = set()
        deadline = time.monotonic() + wait_s
        while behind.keys() - moved:
            errors = admin.alter_group_offsets(group_id, {tp: OffsetAndMetadata(behind[tp], "", -1)
                                                          for tp in behind.keys() - moved})
            moved |= {tp for tp, error in errors.items() if error is NoError}
            if time.monotonic() >= deadline:
                break
            time.sleep(1.0)  # a member of the group still holds it
        return [Deleted(tp.topic, tp.partition, committed[tp], start - 1, tp in moved)
                for tp, start in sorted(behind.items())]
    except KafkaError as exc:
        logging.getLogger("hap.streams").warning("committed offsets below the log start not checked: %r", exc)
        return []
    finally:
        consumer.close()
        admin.close()
