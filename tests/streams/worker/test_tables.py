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
    discard_stale,
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
