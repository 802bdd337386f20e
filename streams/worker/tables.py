"""The join's Faust tables in the worker: where their state lives, and how a batch's changes reach it.

The tables are changelog-backed Faust tables on Faust's RocksDB store (``rocksdb://``, driven through
``rocksdict``) by default: each partition of each table is a RocksDB database on local disk under the
worker's data dir (``<data dir>/v1/tables/<table>-<partition>.db``), and memory holds only
RocksDB's cache and buffers, one budget for all of them (:data:`ROCKSDB_MEMORY`), whatever the rate
and the retention.
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
import functools
import logging
import shutil
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from faust.stores import rocksdb

from streams import metrics
from streams.kafka.batch_producer import Record, changelog_record
from streams.kafka.security import KafkaSecurity

#: the URL of each store the worker runs on (``StreamsConfig.store``)
STORES = ("rocksdb://", "memory://")

#: RocksDB options of each partition's database (Faust's ``RocksDBOptions``; its defaults are a 2 GiB block
#: cache and three 64 MiB write buffers per database, and a worker has four tables x its partitions, standbys
#: included): 8 MiB memtables, at most two each
ROCKSDB_OPTIONS: Mapping[str, int] = {"write_buffer_size": 8 << 20, "max_write_buffer_number": 2,
                                      "target_file_size_base": 32 << 20}
#: the RocksDB memory of a worker process, all its databases together: one block cache, which the memtables
#: (at most :data:`ROCKSDB_WRITE_BUFFERS` of it; past that RocksDB flushes the largest) and the SST files'
#: index and filter blocks are charged to. At 1,000 events/s (``bench/soak.py``) a 128 MiB cache held 108-118 MB
#: after 6 minutes and was still filling, its memtables 40-58 MB of a 64 MiB cap; this half of it is full by
#: minute 2 (44-68 MB from then on, memtables included)
ROCKSDB_MEMORY = 64 << 20
ROCKSDB_WRITE_BUFFERS = 32 << 20


@functools.cache
def shared_memory() -> tuple[Any, Any]:
    """The process's RocksDB block cache and write buffer manager (:data:`ROCKSDB_MEMORY`), each exported as
    ``hap_streams_rocksdb_memory_bytes{part}`` (``cache``: everything charged to the cache, memtables
    included; ``memtables``: the write buffers alone)."""
    import rocksdict

    cache = rocksdict.Cache(ROCKSDB_MEMORY)
    buffers = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(ROCKSDB_WRITE_BUFFERS, False, cache)
    metrics.ROCKSDB_MEMORY.labels("cache").set_function(cache.get_usage)
    metrics.ROCKSDB_MEMORY.labels("memtables").set_function(buffers.get_usage)
    return cache, buffers


class BoundedRocksDBOptions(rocksdb.RocksDBOptions):
    """Faust's RocksDB options (:data:`ROCKSDB_OPTIONS`) with every database of the process on one block cache
    and one write buffer budget (:func:`shared_memory`): the worker's RocksDB memory is bounded whatever its
    partitions, where Faust gives each database a cache and buffers of its own."""

    def as_options(self) -> Any:
        import rocksdict

        options = super().as_options()
        cache, buffers = shared_memory()
        table = rocksdict.BlockBasedOptions()  # Faust's, on the shared cache
        table.set_bloom_filter(self.bloom_filter_size, block_based=True)
        table.set_block_cache(cache)
        # index and filter blocks in the cache too (RocksDB's default keeps them beside it, per open file: a
        # heap that grows with the state on disk); level 0's pinned, as every read looks at each of its files
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(table)
        options.set_write_buffer_manager(buffers)
        return options


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


def check_store(store: str) -> str:
    """``store`` if the worker runs on it (one of :data:`STORES`); else ``ValueError``.

    >>> check_store("memory://")
    'memory://'
    """
    if store not in STORES:
        raise ValueError(f"unknown table store {store!r}: one of {', '.join(STORES)}")
    return store


class FaustTable:
    """A Faust table as a :class:`streams.join.joiner.ChangelogTable`.

    Reads see the current batch's writes (:data:`held`), then the store; writes are held until
    :meth:`store` (after the batch's delivery). A RocksDB store is read in the database of the partition
    the caller names (the join knows each request's: its records'); without one, by key across the
    partitions this worker has open (Faust's own lookup, which otherwise takes the partition of the
    current event: a batch spans partitions), through their bloom filters: a key that is in none, as
    most of the join's reads of ``finalized``, was looked for in every one."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.rocks = isinstance(table.data, rocksdb.Store)
        if self.rocks:  # before it opens a database
            table.data.rocksdb_options = BoundedRocksDBOptions(**ROCKSDB_OPTIONS)
        count_recovered(table)

    def _held(self) -> dict[str, tuple[int, Any]] | None:
        return held.get({}).get(self)

    def get(self, key: str, partition: int | None = None) -> Any:
        writes = self._held()
        if writes is not None and key in writes:
            return writes[key][1]
        return self._stored(key, partition)

    def _stored(self, key: str, partition: int | None) -> Any:
        data = self.table.data
        if not self.rocks:
            return data.get(key)
        raw = data._encode_key(key)
        if partition is None:
            found = data._get_bucket_for_key(raw)
            value = None if found is None else found.value
        else:
            value = data._db_for_partition(partition).get(raw)
        return None if value is None else data._decode_value(value)

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

    def changelog_records(self, writes: Mapping[str, tuple[int, Any]]) -> list[Record]:
        """The changelog records of ``writes`` (key -> (partition, value or None)), in their order: each
        key and value encoded once, for the changelog and for :meth:`store`."""
        return [changelog_record(self.table, partition, key, value) for key, (partition, value) in writes.items()]

    def store(self, writes: Mapping[str, tuple[int, Any]], records: Sequence[Record],
              offsets: Mapping[int, int]) -> None:
        """Write ``writes`` (key -> (partition, value or None)) to the store, delivered to the changelog as
        ``records`` (:meth:`changelog_records`), whose offsets reached ``offsets`` (partition -> the last
        record's; a partition not named keeps its offset: a restart then reads more of the changelog, never
        less). RocksDB: one atomic write per partition, values and offset together, of the records' bytes
        (as Faust's recovery writes a changelog record: the same bytes, encoded once)."""
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
        for _, partition, raw, value in records:
            if value is None:
                batches[partition].delete(raw)
            else:
                batches[partition].put(raw, value)
            data._key_index[raw] = partition
        for partition, offset in offsets.items():
            batches[partition].put(data.offset_key, str(offset).encode())
        for partition, batch in batches.items():
            data._db_for_partition(partition).write(batch)


def persisted_offset(path: Path) -> int | None:
    """The changelog offset a partition's RocksDB state at ``path`` holds up to (Faust's persisted offset),
    read without taking its lock; None when it has none."""
    import rocksdict

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
