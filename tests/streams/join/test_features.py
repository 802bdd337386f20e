"""The streams' feature-store side against a real Redis: counts written once per input record (a
replay adds nothing, an outage is waited out), histories off the event loop, statistics read as of
each request's minute and kept for it; with Redis down, defaults."""

import asyncio
import threading
import time

import orjson
import redis

from deploy.settings import REDIS_PREFIX
from deploy.stack.process import free_port
from feature_store.user_features import user_features_key
from streams.contract.schemas import ExposureEvent
from streams.join.features import StreamFeatures

MINUTE = 60_000
T = 1_700_000_040_000 // MINUTE * MINUTE  # a minute's start


def written(features: StreamFeatures) -> None:
    """Write the counts, flush the histories, then wait for the Redis thread's write."""
    asyncio.run(features.write_counts())
    features.flush()
    features._writing.result(timeout=10)


def test_counts_and_histories_are_written_and_statistics_read_once_per_minute(redis_client):
    features = StreamFeatures(redis_client, prefix=REDIS_PREFIX)
    features.count(ExposureEvent("r", "u", "i1", T + 1_000, "exposure", position=0), 30_000, "hap.exposure", 0, 1)
    features.count(ExposureEvent("r", "u", "i1", T + 2_000, "feedback", click=True), 30_000, "hap.exposure", 0, 2)
    features.set_history("u", ["i1"])
    written(features)
    assert orjson.loads(redis_client.get(user_features_key("u", REDIS_PREFIX))) == {"history": ["i1"]}
    [[same_minute, unknown], [next_minute]] = asyncio.run(
        features.read_groups([(["i1", "i9"], T + 30_000, "u", []), (["i1"], T + MINUTE + 1, "u", [])]))
    assert same_minute["exp_10m"] == 0.0 and unknown["exp_1d"] == 0.0  # the bucket had not closed yet
    assert next_minute["exp_10m"] == 1.0 and next_minute["clk_10m"] == 1.0
    late = ExposureEvent("r2", "u", "i1", T + 3_000, "exposure", position=1)  # late, closed bucket
    features.count(late, 30_000, "hap.exposure", 0, 3)
    asyncio.run(features.write_counts())
    [[kept]] = asyncio.run(features.read_groups([(["i1"], T + MINUTE + 5_000, "u", [])]))
    assert kept["exp_10m"] == 1.0  # read once in this minute
    [[later]] = asyncio.run(features.read_groups([(["i1"], T + 2 * MINUTE, "u", [])]))
    assert later["exp_10m"] == 2.0


def test_with_redis_down_reads_fall_back_and_histories_are_skipped():
    down = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    features = StreamFeatures(down, prefix=REDIS_PREFIX, backoff_s=60)
    features.set_history("u", ["i1"])
    features.flush()
    features._writing.result(timeout=10)  # the write fails: Redis is down, backing off
    [[stats]] = asyncio.run(features.read_groups([(["i1"], T + MINUTE, "u", [])]))
    assert stats["exp_1d"] == 0.0 and not features._spans.get((T + MINUTE) // MINUTE)  # a default is never kept
    features.set_history("u", ["i2"])
    features.flush()
    assert features.histories == {} and features._writing is None  # skipped (counted), not queued
    assert time.monotonic() < features.redis.until  # backing off: no call until then

def counted(features: StreamFeatures, events: list[tuple[ExposureEvent, int]]) -> None:
    """Count ``(event, offset)`` of exposure partition 0, then write the batch's counts (what the worker does
    before it acknowledges the batch)."""
    for event, offset in events:
        features.count(event, 30_000, "hap.exposure", 0, offset)
    asyncio.run(features.write_counts())


def test_counts_replayed_after_a_crash_are_not_counted_twice(redis_client):
    """A worker that crashed after writing a batch's counts and before its offsets were committed: its
    replacement replays the batch from the last commit, and each input record is counted once."""
    batch = [(ExposureEvent("r", "u", "i1", T + 1_000, "exposure", position=0), 5),
             (ExposureEvent("r", "u", "i1", T + 2_000, "feedback", click=True), 6)]
    counted(StreamFeatures(redis_client, prefix=REDIS_PREFIX), batch)
    replacement = StreamFeatures(redis_client, prefix=REDIS_PREFIX)
    counted(replacement, [*batch, (ExposureEvent("r2", "u", "i1", T + 3_000, "exposure", position=0), 7)])
    [[stats]] = asyncio.run(replacement.read_groups([(["i1"], T + MINUTE + 1, "u", [])]))
    assert (stats["exp_10m"], stats["clk_10m"]) == (2.0, 1.0)
    other = StreamFeatures(redis_client, prefix=REDIS_PREFIX)  # another input partition's offsets are its own
    for event, offset in batch[:1]:
        other.count(event, 30_000, "hap.exposure", 1, offset)
    asyncio.run(other.write_counts())
    [[stats]] = asyncio.run(other.read_groups([(["i1"], T + 2 * MINUTE, "u", [])]))
    assert stats["exp_10m"] == 3.0


def test_a_batchs_counts_are_written_before_write_counts_returns_even_through_a_redis_outage(own_redis):
    """``write_counts`` returns once Redis stored them: through an outage it retries (calling ``waiting``,
    which keeps the worker's watchdog fed) instead of buffering counts whose offsets the worker would
    commit (a restart then lost them)."""
    client = redis.Redis.from_url(own_redis.endpoint(), socket_connect_timeout=0.5, socket_timeout=0.5)
    features = StreamFeatures(client, prefix=REDIS_PREFIX, backoff_s=0.01)
    features.count(ExposureEvent("r", "u", "i1", T, "exposure", position=0), 30_000, "hap.exposure", 0, 1)
    own_redis.process.stop()
    waits = []

    def waiting() -> None:
        waits.append(time.monotonic())
        if len(waits) == 3:
            own_redis.start()  # back after three failed tries

    asyncio.run(features.write_counts(waiting))
    assert len(waits) == 3 and features.buffer == []
    [[stats]] = asyncio.run(features.read_groups([(["i1"], T + MINUTE, "u", [])]))
    assert stats["exp_10m"] == 1.0
    client.close()


def test_user_by_item_signals_are_written_with_the_counts_and_read_as_of_the_request(redis_client):
    features = StreamFeatures(redis_client, prefix=REDIS_PREFIX)
    features.count(ExposureEvent("r", "ux", "i1", T + 1_000, "exposure", position=0), 30_000, "hap.exposure", 0, 1)
    features.count(ExposureEvent("r", "ux", "i1", T + 2_000, "feedback", click=True), 30_000, "hap.exposure", 0, 2)
    asyncio.run(features.write_counts())
    assert features.pairs == []
    [[before], [after], [other]] = asyncio.run(features.read_groups([
        (["i1"], T + 1_000, "ux", []), (["i1"], T + 2_001, "ux", []), (["i1"], T + 5_000, "uy", ["i1"])]))
    assert (before["user_seen"], before["user_clicked"]) == (0.0, 0.0)  # its own exposure is not before it
    assert (after["user_seen"], after["user_clicked"]) == (1.0, 1.0)
    assert (other["user_seen"], other["in_history"]) == (0.0, 1.0)


def test_a_read_counts_the_events_taken_in_before_it_and_ages_items_as_of_each_request(redis_client):
    """The batch that closes a window brings events the group's statistics must count: a read stores
    the buffered counts first (before, they were written after the batch's groups, which in a replay
    in log time missed minutes of events). Windows are the minute's; the age is the request's own."""
    features = StreamFeatures(redis_client, prefix=REDIS_PREFIX)
    features.count(ExposureEvent("r", "u", "i1", T + 1_000, "exposure", position=0), 30_000, "hap.exposure", 0, 1)
    features.count(ExposureEvent("r", "u", "i1", T + 2_000, "feedback", click=True), 30_000, "hap.exposure", 0, 2)
    [[early], [late]] = asyncio.run(features.read_groups([(["i1"], T + MINUTE + 1_000, "u2", []),
                                                          (["i1"], T + MINUTE + 37_000, "u", [])]))
    assert early["exp_10m"] == late["exp_10m"] == 1.0 and early["clk_10m"] == 1.0
    assert (early["age_h"], late["age_h"]) == (MINUTE / 3_600_000, (MINUTE + 36_000) / 3_600_000)
    assert late["user_seen"] == 1.0 and features.buffer == [] and features.pairs == []


def test_with_redis_down_a_read_keeps_the_buffered_counts_for_write_counts():
    down = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    features = StreamFeatures(down, prefix=REDIS_PREFIX, backoff_s=60)
    features.count(ExposureEvent("r", "u", "i1", T + 1_000, "exposure", position=0), 30_000, "hap.exposure", 0, 1)
    [[stats]] = asyncio.run(features.read_groups([(["i1"], T + MINUTE, "u", [])]))
    assert stats["exp_10m"] == 0.0 and len(features.buffer) == 1 and len(features.pairs) == 1


def test_buckets_a_pending_read_needs_are_not_pruned_by_counts_hours_ahead(redis_client):
    """A partition ahead of another by hours of event time (a replay in log time) writes counts far past
    the requests still waiting for the slower one: pruning goes by the newest time read, not the newest count."""
    features = StreamFeatures(redis_client, prefix=REDIS_PREFIX)
    counted(features, [(ExposureEvent("r", "u", "i1", T + 1_000, "exposure", position=0), 1)])
    asyncio.run(features.read_groups([(["i1"], T + 30_000, "u", [])]))
    counted(features, [(ExposureEvent("r9", "u", "i1", T + 3 * 3_600_000, "exposure", position=0), 2)])
    [[m10], [h1], [d1]] = asyncio.run(features.read_groups([(["i1"], T + at * MINUTE, "u", []) for at in (5, 20, 70)]))
    assert m10["exp_10m"] == h1["exp_1h"] == d1["exp_1d"] == 1.0  # each window once its bucket closed


class HeldStats:
    """Item statistics whose writes wait until released (Redis taking its time), then fail or store:
    what each write was handed, as it was when handed (the real ``record_once`` reads its counts
    before its round trips), in the order stored."""

    def __init__(self, failures: int = 0) -> None:
        self.release, self.failures = threading.Event(), failures
        self.stored: list[list[int]] = []

    def record_once(self, counts: list, horizon_ms: int | None = None) -> int:
        offsets = [offset for *_, offset in counts]
        self.release.wait(10)
        if self.failures:
            self.failures -= 1
            raise redis.ConnectionError("down")
        self.stored.append(offsets)
        return len(offsets)


def test_counts_taken_in_while_a_write_is_in_flight_are_neither_lost_nor_stored_before_it():
    """The worker joins batch N+1 while batch N's counts are written: the counts N+1 adds meanwhile are
    stored by the next write, after N's, also when N's first try fails (back in front of the buffer:
    the item hashes skip a record at or below the last offset counted, so N+1's first would drop N's).
    Broker- and Redis-free: a fake item-statistics writer."""
    features = StreamFeatures(redis.Redis(port=free_port()), prefix=REDIS_PREFIX, backoff_s=0.01)
    stats = features.stats = HeldStats()  # type: ignore[assignment]
    features.user_items = type("NoPairs", (), {"record": lambda self, pairs: None})()  # type: ignore[assignment]

    def count(offset: int) -> None:
        features.count(ExposureEvent("r", "u", "i1", T + offset, "exposure", position=0), 30_000, "hap.exposure",
                       0, offset)

    async def in_flight(failures: int, concurrent: bool) -> None:
        stats.failures, stats.stored = failures, []
        stats.release.clear()
        count(1)
        first = asyncio.ensure_future(features.write_counts())  # batch N's counts, in flight
        await asyncio.sleep(0.05)
        count(2)  # batch N+1 joined meanwhile
        second = asyncio.ensure_future(features.write_counts()) if concurrent else None
        await asyncio.sleep(0.05)
        stats.release.set()
        await asyncio.wait_for(first, 10)
        await asyncio.wait_for(second or features.write_counts(), 10)  # batch N+1's own, after it was delivered

    asyncio.run(in_flight(failures=0, concurrent=False))
    assert [offset for write in stats.stored for offset in write] == [1, 2]
    asyncio.run(in_flight(failures=1, concurrent=True))  # N's first try fails while N+1's write waits
    assert [offset for write in stats.stored for offset in write] == [1, 2]
    assert features.buffer == [] and features.pairs == []
