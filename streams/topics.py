"""Create the pipeline's topics up front, with one partition count, so that the co-partitioned
join sees every topic from its first poll (a topic created later is ignored until a rebalance).

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

from streams.kafka_security import PLAINTEXT, KafkaSecurity

TOPICS = ("ranking", "exposure", "items", "samples", "dlq", "streams-ticks")
COMPACTED = {"cleanup.policy": "compact"}


Specs = dict[str, tuple[int, dict[str, str]]]  # topic name -> (partitions, topic config)


def pipeline_topics(prefix: str = "hap.", partitions: int = 4) -> Specs:
    """The input, output and internal topics every component shares."""
    return {f"{prefix}{t}": (partitions, {}) for t in TOPICS}


def worker_topics(app_id: str, tables: list[str], partitions: int) -> Specs:
    """The changelogs of ``tables`` and the leader topic of the Faust app ``app_id``."""
    topics = {f"{app_id}-{table}-changelog": (partitions, COMPACTED) for table in tables}
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
