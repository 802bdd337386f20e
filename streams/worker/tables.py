"""The join's Faust tables in the worker: where their state lives, and how a batch's changes reach it.

The tables are changelog-backed Faust tables on Faust's RocksDB store (``rocksdb://``, driven through
``rocksdict``) by default: each partition of each table is a RocksDB database on local disk under the
worker's data dir (``<data dir>/v1/tables/<table>-<partition>.db``), and memory holds only
RocksDB's bounded buffers and caches (:data:`ROCKSDB_OPTIONS`), whatever the rate and the retention.
``memory://`` keeps everything on the heap (tests, short runs). The changelogs in Kafka stay the truth.

A batch's writes are held (:class:`FaustTable`, per agent: :data:`held`) until the batch's outputs and
then its changelog records were delivered; then they go to the store with the changelog offset each
partition reached, in one RocksDB write per partition (:meth:`FaustTable.store`). So the local state of a
killed worker is never ahead of its changelog, nor of its outputs, and a worker restarted on its own
state directory recovers only the changelog records past that offset (Faust's persisted offset), not
the whole changelog as a new worker on an empty directory does.
"""

from __future__ import annotations

import contextvars
import logging
import shutil
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from streams import metrics
from streams.kafka.security import KafkaSecurity

#: the URL of each store the worker runs on (``StreamsConfig.store``)
STORES = ("rocksdb://", "memory://")

#: RocksDB options of each partition's database (Faust's ``RocksDBOptions``; its defaults are a 2 GiB block
#: cache and three 64 MiB write buffers per database, and a worker has four tables x its partitions, standbys
#: included): at most 2 x 8 MiB of write buffers and an 8 MiB block cache each
ROCKSDB_OPTIONS: Mapping[str, int] = {"write_buffer_size": 8 << 20, "max_write_buffer_number": 2,
                                      "block_cache_size": 8 << 20, "target_file_size_base": 32 << 20}

#: the writes of the current agent's batch, per table: key -> (partition, value or None for a delete); each
#: agent has its own (the catalogue agent's delivery never takes the join's writes)
held: contextvars.ContextVar[dict[FaustTable, dict[str, tuple[int, Any]]]] = contextvars.ContextVar("held")


def count_recovered(table: Any) -> None:
    """Count the changelog records Faust's recovery applies to ``table``
    (``hap_streams_changelog_recovered_records_total{table}``)."""
    apply, counter = table.apply_changelog_batch, metrics.CHANGELOG_RECOVERED.labels(table.name)

    def counted(batch: Any) -> None:
        counter.inc(len(batch))
        apply(batch)

    table.apply_changelog_batch = counted


def table_options(store: str) -> dict[str, Any]:
    """The keyword arguments of each join table for ``store`` (one of :data:`STORES`).

    >>> table_options("memory://")
    {}
    >>> table_options("rocksdb://")["options"]["block_cache_size"] == 8 << 20
    True
    """
    if store not in STORES:
        raise ValueError(f"unknown table store {store!r}: one of {', '.join(STORES)}")
    return {"options": dict(ROCKSDB_OPTIONS)} if store == "rocksdb://" else {}


class FaustTable:
    """A Faust table as a :class:`streams.join.joiner.ChangelogTable`.

    Reads see the current batch's writes (:data:`held`), then the store; writes are held until
    :meth:`store` (after the batch's delivery). A RocksDB store is read by key across the
    partitions this worker has open (Faust's own lookup, which otherwise takes the partition of the
    current event: a batch spans partitions), through its bloom filters."""

    def __init__(self, table: Any) -> None:
        from faust.stores import rocksdb

        self.table = table
        self.rocks = isinstance(table.data, rocksdb.Store)
        count_recovered(table)

    def _held(self) -> dict[str, tuple[int, Any]] | None:
        return held.get({}).get(self)

    def get(self, key: str) -> Any:
        writes = self._held()
        if writes is not None and key in writes:
            return writes[key][1]
        return self._stored(key)

    def _stored(self, key: str) -> Any:
        data = self.table.data
        if not self.rocks:
            return data.get(key)
        found = data._get_bucket_for_key(data._encode_key(key))
        return None if found is None else data._decode_value(found.value)

    def items(self) -> Iterator[tuple[str, Any]]:
        writes = self._held() or {}
        for key, value in self.table.data.items():
            if key not in writes:
                yield key, value
        for key, (_, value) in writes.items():
            if value is not None:
                yield key, value

    def put(self, key: str, value: Any, partition: int) -> None:
        held.get().setdefault(self, {})[key] = (partition, value)

    def delete(self, key: str, partition: int) -> None:
        held.get().setdefault(self, {})[key] = (partition, None)

    def changelog_topic(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def store(self, writes: Mapping[str, tuple[int, Any]], offsets: Mapping[int, int]) -> None:
        """Write ``writes`` (key -> (partition, value or None)) to the store, delivered to the changelog,
        whose offsets reached ``offsets`` (partition -> the last record's; a partition not named keeps
        its offset: a restart then reads more of the changelog, never less). RocksDB: one atomic
        write per partition, values and offset together."""
        data = self.table.data
        if not self.rocks:
            for key, (_, value) in writes.items():
                if value is None:
                    data.pop(key, None)
                else:
                    data[key] = value
            return
        import rocksdict

        batches: dict[int, Any] = defaultdict(lambda: rocksdict.WriteBatch(raw_mode=True))
        for key, (partition, value) in writes.items():
            raw = data._encode_key(key)
            if value is None:
                batches[partition].delete(raw)
            else:
                batches[partition].put(raw, data._encode_value(value))
            data._key_index[raw] = partition
        for partition, offset in offsets.items():
            batches[partition].put(data.offset_key, str(offset).encode())
        for partition, batch in batches.items():
            data._db_for_partition(partition).write(batch)


def persisted_offset(path: Path) -> int | None:
    """The changelog offset a partition's RocksDB state at ``path`` holds up to (Faust's persisted offset),
    read without taking its lock; None when it has none."""
    import rocksdict
    from faust.stores import rocksdb

    db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True),
                         access_type=rocksdict.AccessType.read_only())
    try:
        raw = db.get(rocksdb.Store.offset_key)
    finally:
        db.close()
    return None if raw is None else int(raw)


def discard_stale(tables: Iterable[Any], bootstrap: str, security: KafkaSecurity) -> list[Path]:
    """Remove the local state of every partition of ``tables`` (Faust tables) that holds changelog
    offsets the changelog does not have (its topic was deleted and created again: a new Kafka under an
    old data dir); returns their paths. Such state would make Faust's recovery refuse to start (its
    consistency check), and it belongs to another pipeline: the partition is rebuilt from its changelog."""
    from faust.stores import rocksdb
    from kafka import KafkaConsumer, TopicPartition

    found = {}
    for table in tables:
        store = table.data
        if isinstance(store, rocksdb.Store):
            topic = table.changelog_topic.get_topic_name()
            for partition in range(table.partitions or 0):
                path = store.partition_path(partition)
                if path.exists() and (offset := persisted_offset(path)) is not None:
                    found[TopicPartition(topic, partition)] = (path, offset)
    if not found:
        return []
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=15_000, **security.client_options())
    try:
        ends = consumer.end_offsets(list(found))
    finally:
        consumer.close()
    stale = [path for tp, (path, offset) in found.items() if offset >= ends.get(tp, 0)]
    for path in stale:
        logging.getLogger("hap.streams").warning(
            "%s holds changelog offsets its changelog does not have (a new Kafka?): removed, rebuilt from the "
            "changelog", path)
        shutil.rmtree(path)
    return stale
