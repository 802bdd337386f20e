"""Windowed item statistics in a real Redis, read as of a point in time."""

from deploy.settings import REDIS_PREFIX
from feature_store.featurize import SINCE_LAST_MAX_M, smoothed_ctr
from feature_store.item_stats import ItemStats

MIN = 60_000


def test_windows_count_only_buckets_closed_before_the_read_time(redis_client):
    stats = ItemStats(redis_client, prefix=REDIS_PREFIX)
    stats.record([("n1", "exp", 5 * MIN)] * 4 + [("n1", "clk", 5 * MIN), ("n1", "exp", 30 * MIN)])
    at_10 = stats.read(["n1"], at_ms=10 * MIN)[0]
    assert at_10["exp_10m"] == 4 and at_10["clk_10m"] == 1
    assert at_10["exp_1h"] == 4  # the ten-minute bucket [0, 10) closed at minute 10
    at_31 = stats.read(["n1"], at_ms=31 * MIN)[0]
    assert at_31["exp_10m"] == 1 and at_31["exp_1h"] == 4  # the bucket of minute 30 is closed; [30, 40) is not
    assert at_31["ctr_1h"] == smoothed_ctr(1, 4)  # one click in the four exposures of the closed hour buckets
    assert stats.read(["never-seen"], at_ms=31 * MIN)[0]["ctr_1h"] == smoothed_ctr(0, 0)  # the prior


def test_events_after_the_request_never_leak_into_its_statistics(redis_client):
    stats = ItemStats(redis_client, prefix=REDIS_PREFIX)
    stats.record([("n2", "clk", 20 * MIN + 5)])
    assert stats.read(["n2"], at_ms=20 * MIN + 30_000)[0]["clk_10m"] == 0
    assert stats.prune("n2", now_ms=3 * 86_400_000) == 3


def test_an_item_shown_for_days_keeps_a_bounded_hash(redis_client):
    stats = ItemStats(redis_client, prefix=REDIS_PREFIX)
    for minute in range(0, 3 * 24 * 60, 7):  # three days of exposures, every 7 minutes
        stats.record([("n3", "exp", minute * MIN)])
    fields = redis_client.hkeys(stats.key("n3"))
    # what the windows need (10 minute, 6 ten-minute and 24 hour buckets; minutes for since_last_m's look-back)
    # plus up to two hours' worth
    bound = (SINCE_LAST_MAX_M // 7 + 120 // 7 + 1) + (6 + 12 + 1) + (24 + 2 + 1)
    assert len(fields) <= bound, len(fields)  # three days: ~1,800
    last_day = range(2 * 24 * 60, 3 * 24 * 60, 7)
    assert stats.read(["n3"], at_ms=3 * 24 * 60 * MIN)[0]["exp_1d"] == len(last_day)


def script_commands(client) -> dict[str, int]:
    """Calls so far of ``SCRIPT EXISTS`` and ``SCRIPT LOAD`` (Redis's command statistics)."""
    stats = client.info("commandstats")
    return {name: stats.get(f"cmdstat_script|{name}", {}).get("calls", 0) for name in ("exists", "load")}


def test_counts_go_by_the_script_s_sha_which_is_loaded_only_when_redis_lacks_it(redis_client):
    stats = ItemStats(redis_client, prefix=REDIS_PREFIX)
    redis_client.script_flush()
    before = script_commands(redis_client)
    counts = [("n4", "exp", 5 * MIN, "hap.exposure:0", 1), ("n4", "clk", 5 * MIN, "hap.exposure:0", 2)]
    assert stats.record_once(counts) == 2  # loaded once: Redis had not got it
    assert stats.record_once(counts) == 0 and stats.record_once([("n4", "exp", 6 * MIN, "hap.exposure:0", 3)]) == 1
    redis_client.script_flush()  # Redis lost its scripts (a restart): loaded again, nothing counted twice
    assert stats.record_once([*counts, ("n4", "exp", 7 * MIN, "hap.exposure:0", 4)]) == 1
    after = script_commands(redis_client)
    assert after["exists"] - before["exists"] == 0 and after["load"] - before["load"] == 2
    assert stats.read(["n4"], at_ms=10 * MIN)[0]["exp_10m"] == 3
