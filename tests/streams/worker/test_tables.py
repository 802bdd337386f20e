"""The tables' local RocksDB state: a state dir whose changelog offsets its changelog does not have (a new Kafka
under an old data dir, where Faust's recovery would refuse to start) is removed before the worker starts; one
the changelog covers is kept; every database's memory is charged to the worker's one budget, and exported."""

from __future__ import annotations

import random

import rocksdict
from faust.stores import rocksdb
from kafka import KafkaProducer
from prometheus_client import REGISTRY

from feature_store.connection import RedisEndpoint
from streams.kafka.topics import create_missing, worker_topics
from streams.worker.app import StreamsConfig, StreamsWorker
from streams.worker.tables import (
    ROCKSDB_MEMORY,
    ROCKSDB_OPTIONS,
    ROCKSDB_WRITE_BUFFERS,
    BoundedRocksDBOptions,
    FaustTable,
    discard_stale,
    held,
    persisted_offset,
)


def write_state(path, offset: int) -> None:
    db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
    db[b"r1"] = b"{}"
    db[rocksdb.Store.offset_key] = str(offset).encode()
    db.close()


def test_a_state_ahead_of_its_changelog_is_removed_and_one_it_covers_is_kept(kafka_bootstrap, topic_prefix, tmp_path):
    cfg = StreamsConfig(bootstrap=kafka_bootstrap, redis=RedisEndpoint("redis://127.0.0.1:1"), redis_prefix="t:",
                        topic_prefix=topic_prefix, data_dir=tmp_path, partitions=2)
    app = StreamsWorker(cfg).app
    create_missing(kafka_bootstrap, worker_topics(app.conf.id, list(app.tables), cfg.partitions))
    pending = app.tables["pending"]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for n in range(3):  # the changelog of pending's partition 0 holds offsets 0-2
        producer.send(pending.changelog_topic.get_topic_name(), key=f"k{n}".encode(), value=b"{}", partition=0)
    producer.flush()
    producer.close()
    covered, ahead = pending.data.partition_path(0), pending.data.partition_path(1)
    covered.parent.mkdir(parents=True, exist_ok=True)
    write_state(covered, 2)
    write_state(ahead, 500)  # partition 1's changelog is empty: a state of another Kafka
    assert persisted_offset(covered) == 2
    assert discard_stale(app.tables.values(), kafka_bootstrap, cfg.kafka_security) == [ahead]
    assert covered.exists() and not ahead.exists()


def test_rocksdb_memory_is_charged_to_one_budget_and_exported(tmp_path):
    db = rocksdict.Rdict(str(tmp_path / "db"), options=BoundedRocksDBOptions(**ROCKSDB_OPTIONS).as_options())
    rng = random.Random(7)
    for _ in range(100_000):
        db[rng.randbytes(8)] = rng.randbytes(100)
    memtables = REGISTRY.get_sample_value("hap_streams_rocksdb_memory_bytes", {"part": "memtables"})
    db.flush()
    for _ in range(1000):
        db.get(rng.randbytes(8))
    cache = REGISTRY.get_sample_value("hap_streams_rocksdb_memory_bytes", {"part": "cache"})
    # the SST files' index and filter blocks are in the cache, not beside it (166 KB here otherwise)
    outside = db.property_int_value("rocksdb.estimate-table-readers-mem")
    db.close()
    assert 0 < memtables <= ROCKSDB_WRITE_BUFFERS and 0 < cache <= ROCKSDB_MEMORY
    assert outside < 32_000


class CountingDB:
    """A partition's RocksDB database that counts the reads made of it."""

    def __init__(self, db) -> None:
        self.db, self.reads = db, 0

    def get(self, key):
        self.reads += 1
        return self.db.get(key)

    def key_may_exist(self, key):
        self.reads += 1
        return self.db.key_may_exist(key)

    def write(self, batch) -> None:
        self.db.write(batch)


def rocksdb_table(tmp_path, partitions: int = 4):
    import faust

    app = faust.App("hap-tables-probe", store="rocksdb://", datadir=str(tmp_path), web_enabled=False)
    table = FaustTable(app.Table("pending", default=None, partitions=partitions))
    dbs = {p: CountingDB(table.table.data._db_for_partition(p)) for p in range(partitions)}
    table.table.data._dbs.update(dbs)
    return table, dbs


def write(table: FaustTable, writes: dict) -> None:
    table.store(writes, table.changelog_records(writes), {})


def test_a_read_naming_its_partition_looks_in_that_partition_s_database_alone(tmp_path):
    table, dbs = rocksdb_table(tmp_path)
    write(table, {"r1": (2, {"exposed": {"i1": 0}}), "r2": (1, {"exposed": {}})})
    held.set({})
    assert table.get("r1", 2) == {"exposed": {"i1": 0}} and table.get("r9", 2) is None
    assert table.get("r2", 2) is None  # written to partition 1: not looked for elsewhere
    assert [db.reads for db in dbs.values()] == [0, 0, 3, 0]
    assert table.get("r9") is None and all(db.reads for db in dbs.values())  # no partition: every database


def test_the_store_holds_the_changelog_record_s_bytes_as_faust_encodes_them(tmp_path):
    table, dbs = rocksdb_table(tmp_path)
    value = {"exposed": {"i1": 0}, "positive": ["i1"], "revision": 1}
    records = table.changelog_records({"r1": (3, value), "r2": (0, None)})
    data = table.table.data
    assert records == [(table.changelog_topic(), 3, data._encode_key("r1"), data._encode_value(value)),
                       (table.changelog_topic(), 0, data._encode_key("r2"), None)]
    table.store({"r1": (3, value), "r2": (0, None)}, records, {3: 41})
    assert dbs[3].db.get(data._encode_key("r1")) == data._encode_value(value)
    assert dbs[3].db.get(rocksdb.Store.offset_key) == b"41"
