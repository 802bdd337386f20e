"""The streams' feature-store side against a real Redis: counts and histories written off the event
loop, statistics read as of each request's minute and kept for it; with Redis down, defaults and
nothing lost."""

import asyncio
import time

import orjson
import redis

from deploy.stack.process import free_port
from streams.contract.schemas import ExposureEvent
from streams.join.features import StreamFeatures

MINUTE = 60_000
T = 1_700_000_040_000 // MINUTE * MINUTE  # a minute's start


def written(features: StreamFeatures) -> None:
    """Flush, then wait for the Redis thread's write."""
    features.flush()
    features._writing.result(timeout=10)


def test_counts_and_histories_are_written_and_statistics_read_once_per_minute(redis_client):
    features = StreamFeatures(redis_client, prefix="hap:")
    features.count(ExposureEvent("r", "u", "i1", T + 1_000, "exposure", position=0), 30_000)
    features.count(ExposureEvent("r", "u", "i1", T + 2_000, "feedback", click=True), 30_000)
    features.set_history("u", ["i1"])
    written(features)
    assert orjson.loads(redis_client.get("hap:feat:user:u")) == {"history": ["i1"]}
    [[same_minute, unknown], [next_minute]] = asyncio.run(
        features.read_groups([(["i1", "i9"], T + 30_000), (["i1"], T + MINUTE + 1)]))
    assert same_minute["exp_10m"] == 0.0 and unknown["exp_1d"] == 0.0  # the bucket had not closed yet
    assert next_minute["exp_10m"] == 1.0 and next_minute["clk_10m"] == 1.0
    features.count(ExposureEvent("r2", "u", "i1", T + 3_000, "exposure", position=1), 30_000)  # late, closed bucket
    written(features)
    [[kept]] = asyncio.run(features.read_groups([(["i1"], T + MINUTE + 5_000)]))
    assert kept["exp_10m"] == 1.0  # read once in this minute
    [[later]] = asyncio.run(features.read_groups([(["i1"], T + 2 * MINUTE)]))
    assert later["exp_10m"] == 2.0


def test_with_redis_down_reads_fall_back_and_counts_wait():
    down = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    features = StreamFeatures(down, prefix="hap:", backoff_s=60)
    features.count(ExposureEvent("r", "u", "i1", T, "exposure", position=0), 30_000)
    features.set_history("u", ["i1"])
    written(features)  # the write fails: its counts come back at the next flush
    [[stats]] = asyncio.run(features.read_groups([(["i1"], T + MINUTE)]))
    assert stats["exp_1d"] == 0.0 and not features._spans.get((T + MINUTE) // MINUTE)  # a default is never kept
    features.flush()
    assert features.buffer == [("i1", "exp", T)] and features.histories == {}
    assert time.monotonic() < features.redis.until  # backing off: no call until then
