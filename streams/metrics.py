"""Prometheus metrics of the streams workers."""

from prometheus_client import Counter, Gauge, Histogram

from streams.contract.validate import REASON_KINDS
from streams.kafka.lag import LagGauge

EVENTS = Counter("hap_streams_events", "Input events consumed", ["topic"])
GROUPS = Counter("hap_streams_groups", "Sample groups emitted", ["kind"])
SAMPLES = Counter("hap_streams_samples", "Samples emitted", ["source"])
PENDING = Gauge("hap_streams_pending_requests", "Requests waiting for their join window to close")
LAG = Histogram(
    "hap_streams_event_to_sample_seconds", "Wall time from a request's last event to its group's emission",
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 3, 5, 10, 20, 30, 45, 60, 120),
)
LATE = Counter("hap_streams_late", "Events for requests already finalized", ["outcome"])
#: ``topic``: of the rejected input ("" for an orphan request, which has none)
INVALID = Counter("hap_streams_invalid", "Records sent to the dead-letter topic", ["topic", "reason_kind"])
#: ``topic``: of the dropped event (with the prefix, as ``INVALID``'s)
DUPLICATES = Counter("hap_streams_duplicate_events",
                     "Events dropped because their request had taken an event with the same event_id (a producer's "
                     "retry), within its join and retention windows", ["topic"])
UNDECODABLE = Counter("hap_streams_undecodable_records",
                      "Kafka records skipped because their batch could not be decoded (the batch is dead-lettered)")
IMPLIED = Counter("hap_streams_implied_exposures",
                  "Items with feedback but no exposure event, taken as exposed (position unknown)")
CATALOGUE = Counter("hap_streams_catalogue_records",
                    "Records of the items topic read into the candidate pool (every partition, on every worker)")
RETENTION_LOST = Counter("hap_streams_retention_lost",
                         "Input records deleted by retention before the worker read them (it resumed below the "
                         "log start)", ["topic", "partition"])
REFETCHES = Counter("hap_streams_input_refetches",
                    "Input partitions read again from the next offset the join expected, after the consumer "
                    "delivered records past offsets it never delivered", ["topic", "partition"])
CONSUMER_LAG = LagGauge(Gauge(
    "hap_streams_consumer_lag_records", "Records of an input partition the streams group has not committed yet: the "
    "broker's log-end offset minus the group's committed offset (every worker exports its group's)",
    ["group", "topic", "partition"]))
MISSING = Counter("hap_feature_store_missing", "Feature lookups that fell back to a default", ["kind"])
#: counted across the worker's processes: each replacement starts it at the supervisor's count (``--restarts``)
RESTARTS = Counter("hap_streams_worker_restarts", "Workers the supervisor started to replace one that exited (any "
                   "exit); reset only when the supervisor restarts")
EXITS = Counter("hap_streams_worker_exits", "Earlier workers' exits that the supervisor restarted, by reason",
                ["reason"])
ERRORS = Counter("hap_streams_errors", "Failures of a dependency and what they cost", ["kind"])
# exported at 0 from the start, so that rate() and increase() see the first one
for _kind in ("redis", "history_skipped", "catalogue", "lag"):
    ERRORS.labels(_kind)


def export_invalid(topics: list[str]) -> None:
    """Export the dead-letter counter at 0 for every input topic and kind (so that rate() sees the first one)."""
    for topic in topics:
        for kind in REASON_KINDS:
            INVALID.labels(topic, kind)


ASSIGNED = Gauge("hap_streams_assigned_partitions", "Partitions of each join input (`ranking`, `exposure`) "
                 "this worker holds since the last rebalance", ["topic"])
ROCKSDB_MEMORY = Gauge("hap_streams_rocksdb_memory_bytes",
                       "RocksDB memory of the worker process, all its tables' databases together: `cache` is "
                       "everything charged to its one block cache (memtables, index and filter blocks included), "
                       "`memtables` the write buffers alone", ["part"])
#: per table: what a start or rebalance read of its changelog (a worker on its own state directory reads
#: only the records past what its local store holds; one on an empty directory, all of them)
CHANGELOG_RECOVERED = Counter("hap_streams_changelog_recovered_records",
                              "Changelog records the worker applied to its tables while recovering them", ["table"])
