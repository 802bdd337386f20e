"""Create the pipeline's topics up front, with one partition count, so that the co-partitioned
join sees every topic from its first poll (a topic created later is ignored until a rebalance).

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
"""

from __future__ import annotations

import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from streams.contract import Limits
from streams.kafka_security import PLAINTEXT, KafkaSecurity

TOPICS = ("ranking", "exposure", "items", "samples", "dlq", "streams-ticks")
INPUTS = ("ranking", "exposure", "items")
COMPACTED = {"cleanup.policy": "compact"}
#: a record's key, headers and batch framing on top of its value
RECORD_OVERHEAD_BYTES = 64 * 1024


DEFAULT_LIMITS = Limits()


def record_limits(limits: Limits = DEFAULT_LIMITS) -> tuple[int, int]:
    """(bytes an input topic and its producers take, bytes the worker's output topics and producer take)."""
    return (limits.max_message_bytes + RECORD_OVERHEAD_BYTES,
            2 * limits.max_message_bytes + RECORD_OVERHEAD_BYTES)


def _sized(max_bytes: int, config: dict[str, str] | None = None) -> dict[str, str]:
    return {**(config or {}), "max.message.bytes": str(max_bytes)}


Specs = dict[str, tuple[int, dict[str, str]]]  # topic name -> (partitions, topic config)


def pipeline_topics(prefix: str = "hap.", partitions: int = 4) -> Specs:
    """The input, output and internal topics every component shares, with their size limits."""
    inputs, outputs = record_limits()
    return {f"{prefix}{t}": (partitions, _sized(inputs if t in INPUTS else outputs)) for t in TOPICS}


def worker_topics(app_id: str, tables: list[str], partitions: int) -> Specs:
    """The changelogs of ``tables`` (sized for the worker's records), the leader topic of the Faust app ``app_id``."""
    topics = {f"{app_id}-{table}-changelog": (partitions, _sized(record_limits()[1], COMPACTED)) for table in tables}
    topics[f"{app_id}-__assignor-__leader"] = (1, {})
    return topics


def ensure_topics(bootstrap: str, prefix: str = "hap.", partitions: int = 4,
                  security: KafkaSecurity = PLAINTEXT) -> list[str]:
    """Create the missing pipeline topics; returns the names created. Existing topics are left as they are."""
    return create_missing(bootstrap, pipeline_topics(prefix, partitions), security)


def create_missing(bootstrap: str, topics: Specs, security: KafkaSecurity = PLAINTEXT,
                   timeout_s: float = 30.0) -> list[str]:
    """Create those of ``topics`` (name -> partitions, config) that are missing and wait until
    every partition of each has a leader; returns the names created."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000, **security.client_options())
    try:
        existing = set(admin.list_topics())
        missing = [name for name in topics if name not in existing]
        if missing:
            try:
                admin.create_topics([NewTopic(name, topics[name][0], 1, topic_configs=topics[name][1])
                                     for name in missing])
            except TopicAlreadyExistsError:
                pass  # created concurrently by another worker
        _wait_for_leaders(admin, topics, timeout_s)
        return missing
    finally:
        admin.close()


def _wait_for_leaders(admin: KafkaAdminClient, topics: Specs, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        described = {t["name"]: t for t in admin.describe_topics(list(topics))}
        waiting = [name for name, (n, _) in topics.items()
                   if len([p for p in described.get(name, {}).get("partitions", []) if p["leader_id"] >= 0]) < n]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics without leaders after {timeout_s:.0f}s: {', '.join(waiting)}")
        time.sleep(0.2)
