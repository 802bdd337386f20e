"""Create the pipeline's topics up front, with one partition count, so that the co-partitioned
join sees every topic from its first poll (a topic created later is ignored until a rebalance)."""

from __future__ import annotations

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from streams.kafka_security import PLAINTEXT, KafkaSecurity

TOPICS = ("ranking", "exposure", "items", "samples", "dlq", "streams-ticks")


def ensure_topics(bootstrap: str, prefix: str = "hap.", partitions: int = 4,
                  security: KafkaSecurity = PLAINTEXT) -> list[str]:
    """Create the missing topics; returns the names created. Existing topics are left as they are."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000, **security.client_options())
    try:
        existing = set(admin.list_topics())
        missing = [f"{prefix}{t}" for t in TOPICS if f"{prefix}{t}" not in existing]
        if missing:
            try:
                admin.create_topics([NewTopic(name, partitions, 1) for name in missing])
            except TopicAlreadyExistsError:
                pass  # created concurrently by another worker
        return missing
    finally:
        admin.close()
