"""The router's feature table over a real Redis: array reads equal the per-item featurization,
refreshes happen in the background (stale rows keep serving), Redis outages and malformed data
give counted defaults, the table stays within its byte bound, and cached item vectors follow the
features they were computed from."""

import functools
import time

import numpy as np
import pytest
import redis
from prometheus_client import REGISTRY

from deploy.settings import REDIS_PREFIX
from feature_store.featurize import FEATURES, dense_stats, featurize_items
from feature_store.item_stats import ItemStats
from feature_store.model_store import LoadedVersion
from feature_store.user_features import user_features_key
from feature_store.user_items import CLICKED, SHOWN, UserItems
from router.features import ROW_BYTES, STATS_SETTLE_S, DuplicateCandidate, FeatureCache, inline_matrix
from router.holder import build
from router.prerank import mark_user_items
from router.stats_reader import _WIDTH as WIDTH
from router.stats_reader import ABSENT, MALFORMED, OK, StatsReader

from .conftest import tiers_of

MIN = 60_000


def count(name: str, kind: str) -> float:
    return REGISTRY.get_sample_value(f"hap_router_{name}_total", {"kind": kind}) or 0.0


def fill(client: redis.Redis, now_ms: int) -> list[str]:
    """Items with buckets inside and outside every window (up to 25 h old: the writer prunes what
    left its window more than an hour before), one with only the open minute."""
    stats = ItemStats(client, prefix=REDIS_PREFIX)
    rng = np.random.default_rng(0)
    events = []
    for n in range(30):
        for _ in range(int(rng.integers(1, 40))):
            ago = int(rng.integers(0, 25 * 3_600_000))
            events.append((f"i{n}", ["exp", "clk", "pos"][int(rng.integers(3))], now_ms - ago))
    events.append(("open-minute-only", "exp", now_ms))
    stats.record(events)
    return [f"i{n}" for n in range(30)] + ["open-minute-only"]


def test_array_read_equals_window_stats_in_both_read_paths(redis_client):
    now_ms = 1_000 * 3_600_000 + 123_456
    ids = fill(redis_client, now_ms) + ["absent"]
    stats = ItemStats(redis_client, prefix=REDIS_PREFIX)
    expected = np.array([dense_stats(s) for s in stats.read(ids, now_ms)], np.float32)
    reader = StatsReader(redis_client, prefix=REDIS_PREFIX, batch=7)
    for scripts in (True, False):
        reader.scripts_work = scripts
        raw, state = reader.read(ids, now_ms)
        np.testing.assert_array_equal(dense_stats_matrix_of(raw), expected)
        assert state.tolist() == [OK] * 31 + [ABSENT]


def test_the_scripts_reply_is_the_rows_as_doubles_read_without_parsing_text(redis_client):
    """Issue 34: a text reply cost the refresh thread a Python object and a parse per number (a quarter
    of its CPU, holding the GIL); the rows come as little-endian doubles, the counts exact past 2**31."""
    now_ms = 1_000 * 3_600_000 + 123_456
    ids = fill(redis_client, now_ms)
    ItemStats(redis_client, prefix=REDIS_PREFIX).record([("big", "exp", now_ms - MIN)] * 3)
    redis_client.hincrby(ItemStats(redis_client, prefix=REDIS_PREFIX).key("big"), f"m:exp:{now_ms // MIN - 1}",
                         2**40)
    reader = StatsReader(redis_client, prefix=REDIS_PREFIX)
    reply = reader.script(keys=[reader.stats.key(i) for i in [*ids, "big"]], args=[now_ms, *reader.window_args])
    assert isinstance(reply, bytes) and len(reply) == (len(ids) + 1) * 8 * WIDTH
    raw, state = reader.read([*ids, "big"], now_ms)
    assert state[-1] == OK and raw[-1, FEATURES.index("exp_10m")] == 2**40 + 3


def test_malformed_statistics_hash_is_a_counted_default_in_both_read_paths(redis_client):
    now_ms = 500 * 3_600_000
    stats = ItemStats(redis_client, prefix=REDIS_PREFIX)
    stats.record([("good", "exp", now_ms - 2 * MIN)])
    redis_client.hset(stats.key("bad-field"), mapping={"nonsense": 3, f"m:exp:{now_ms // MIN - 2}": 1})
    redis_client.hset(stats.key("bad-value"), f"m:exp:{now_ms // MIN - 2}", "many")
    reader = StatsReader(redis_client, prefix=REDIS_PREFIX)
    for scripts in (True, False):
        reader.scripts_work = scripts
        raw, state = reader.read(["good", "bad-field", "bad-value"], now_ms)
        assert state.tolist() == [OK, MALFORMED, MALFORMED]
        # windows and age are always there; a missing recency or user-by-item feature is NaN (absent)
        assert raw[0].any() and np.isfinite(raw[:, :FEATURES.index("age_h") + 1]).all()
        np.testing.assert_array_equal(dense_stats_matrix_of(raw[1:]), [dense_stats({})] * 2)


def dense_stats_matrix_of(raw: np.ndarray) -> np.ndarray:
    from feature_store.featurize import dense_stats_matrix

    return dense_stats_matrix(raw)


def test_lookup_matches_featurize_items_and_counts_only_items_without_statistics(redis_client, monkeypatch):
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now)  # an item's age is read as of the read: the same time in both
    now_ms = int(time.time() * 1000)
    ids = fill(redis_client, now_ms) + ["absent-1", "absent-2"]
    cache = FeatureCache(redis_client, prefix=REDIS_PREFIX)
    before = count("missing_features", "item_stats")
    found = cache.lookup(ids, ["video", "news"] * (len(ids) // 2) + ["video"] * (len(ids) % 2))
    expected = featurize_items(ids, ["video", "news"] * (len(ids) // 2) + ["video"] * (len(ids) % 2),
                               ItemStats(redis_client, prefix=REDIS_PREFIX).read(ids, int(time.time() * 1000)))
    np.testing.assert_array_equal(found.items.item_idx, expected.item_idx)
    np.testing.assert_array_equal(found.items.ctype_idx, expected.ctype_idx)
    np.testing.assert_allclose(found.items.dense, expected.dense, atol=1e-6)
    # the open-minute-only item has statistics (its windows are empty): only the two absent ones count
    assert count("missing_features", "item_stats") - before == 2


def test_inline_statistics_become_the_same_dense_rows():
    stats = [{"exp_1h": 9.0, "ctr_1d": 0.2}, {}, {"clk_10m": 3, "pos_1d": 1e30, "other": 1.0}]
    np.testing.assert_array_equal(inline_matrix(stats), np.array([dense_stats(s) for s in stats], np.float32))


def test_a_stale_row_serves_while_it_is_refreshed_in_the_background(redis_client):
    now_ms = int(time.time() * 1000)
    stats = ItemStats(redis_client, prefix=REDIS_PREFIX)
    stats.record([("s1", "exp", now_ms - 5 * MIN)])
    cache = FeatureCache(redis_client, prefix=REDIS_PREFIX, stats_period_s=0.05, stats_settle_s=0.0)
    first = cache.lookup(["s1"], ["video"]).items.dense.copy()
    stats.record([("s1", "exp", now_ms - 5 * MIN)] * 50)
    time.sleep(0.15)  # past the next close (a period at most) and the row's phase after it
    served = cache.lookup(["s1"], ["video"])  # stale: served as it was, the read is queued
    np.testing.assert_array_equal(served.items.dense, first)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = cache.lookup(["s1"], ["video"])
        if not np.array_equal(now.items.dense, first):
            break
    cache.stop()
    assert now.items.dense[0].max() > first[0].max()  # the background read landed
    assert now.stamps[0] != served.stamps[0]  # and the row's stamp moved with it


def test_a_redis_outage_gives_counted_defaults_and_keeps_stale_rows(own_redis):
    client = redis.Redis.from_url(own_redis.endpoint(), socket_timeout=0.2, socket_connect_timeout=0.2)
    ItemStats(client, prefix=REDIS_PREFIX).record([("k1", "exp", int(time.time() * 1000) - 5 * MIN)] * 3)
    cache = FeatureCache(client, prefix=REDIS_PREFIX, stats_period_s=0.01, stats_settle_s=0.0)
    known = cache.lookup(["k1"], ["video"]).items.dense.copy()
    own_redis.process.stop()
    time.sleep(0.05)
    before = count("missing_features", "item")
    during = cache.lookup(["k1", "never-seen"], ["video", "video"])
    time.sleep(0.5)
    again = cache.lookup(["k1", "never-seen-2"], ["video", "video"])
    cache.stop()
    np.testing.assert_array_equal(during.items.dense[0], known[0])
    np.testing.assert_array_equal(again.items.dense[0], known[0])
    np.testing.assert_array_equal(during.items.dense[1], dense_stats({}))
    assert count("missing_features", "item") - before == 2


def test_stale_rows_queue_no_refresh_while_redis_backs_off(own_redis):
    client = redis.Redis.from_url(own_redis.endpoint(), socket_timeout=0.2, socket_connect_timeout=0.2)
    ItemStats(client, prefix=REDIS_PREFIX).record([("k1", "exp", int(time.time() * 1000) - 5 * MIN)])
    cache = FeatureCache(client, prefix=REDIS_PREFIX, stats_period_s=0.01, stats_settle_s=0.0, backoff_s=60)
    known = cache.lookup(["k1"], ["video"]).items.dense.copy()
    own_redis.process.stop()
    time.sleep(0.05)
    cache.lookup(["never-seen"], ["video"])  # its read fails: Redis backs off
    assert not cache.redis.ready
    queued = []
    cache._enqueue = lambda slots, ids: queued.append(ids)
    for _ in range(20):
        served = cache.lookup(["k1"], ["video"])  # stale, served as it was
        time.sleep(0.01)
    cache.stop()
    np.testing.assert_array_equal(served.items.dense, known)
    assert queued == []


def test_the_table_is_bounded_in_bytes_and_evicts_the_least_recently_used(redis_client):
    cache = FeatureCache(redis_client, prefix=REDIS_PREFIX, max_bytes=1, capacity=None)
    assert cache.capacity * ROW_BYTES >= 1  # the floor of rows
    small = FeatureCache(redis_client, prefix=REDIS_PREFIX, capacity=1000)
    for start in range(0, 5000, 500):
        ids = [f"e{n}" for n in range(start, start + 500)]
        found = small.lookup(ids, ["video"] * 500)
        assert len(found.slots) == 500 and len(set(found.slots.tolist())) == 500
        assert len(small.slot_of) <= small.capacity
    assert "e4999" in small.slot_of and "e0" not in small.slot_of
    assert all(small.id_of[slot] == item_id for item_id, slot in small.slot_of.items())


def test_cached_item_vectors_follow_their_features(redis_client):
    model = build(LoadedVersion(1, tiers_of(seed=3), {"version": 1}))
    cache = FeatureCache(redis_client, prefix=REDIS_PREFIX)
    ids = [f"v{n}" for n in range(20)]
    cache.put(ids, [{"exp_1h": float(n)} for n in range(20)])
    found = cache.lookup(ids, ["video"] * 20)
    first = model.item_vectors(found)
    np.testing.assert_allclose(first, model.light.item_vectors(found.items), atol=1e-6)
    assert np.array_equal(model.item_vectors(cache.lookup(ids, ["video"] * 20)), first)  # from the cache
    cache.put(ids[5:], [{"exp_1h": float(n)} for n in range(5, 20)])  # read again, the same: stamps kept
    assert np.array_equal(cache.lookup(ids, ["video"] * 20).stamps, found.stamps)
    computed = model.light.item_vectors
    model.light.item_vectors = None  # every vector must come from the cache now
    assert np.array_equal(model.item_vectors(cache.lookup(ids, ["video"] * 20)), first)
    model.light.item_vectors = computed
    cache.put(ids[:5], [{"exp_1h": 1000.0}] * 5)  # new features: new stamps
    changed = cache.lookup(ids, ["news"] * 10 + ["video"] * 10)  # and half change content type
    vectors = model.item_vectors(changed)
    np.testing.assert_allclose(vectors, model.light.item_vectors(changed.items), atol=1e-6)
    assert not np.allclose(vectors[:10], first[:10]) and np.array_equal(vectors[10:], first[10:])
    warmed = build(LoadedVersion(2, tiers_of(seed=4), {"version": 2}))
    assert warmed.warm(cache) == 20
    np.testing.assert_allclose(warmed.vectors.vec[changed.slots], warmed.light.item_vectors(changed.items),
                               atol=1e-6)


def test_inline_statistics_sent_again_reuse_their_item_vectors_and_changed_ones_do_not(redis_client):
    model = build(LoadedVersion(1, tiers_of(seed=3), {"version": 1}))
    cache = FeatureCache(redis_client, prefix=REDIS_PREFIX)
    ids = [f"w{n}" for n in range(20)]
    stats = [{"exp_1h": float(n), "ctr_1d": 0.1} for n in range(20)]
    computed, asked = model.light.item_vectors, []
    model.light.item_vectors = lambda items: asked.append(len(items)) or computed(items)

    def vectors(stats: list[dict], ids: list[str] = ids) -> tuple[np.ndarray, np.ndarray]:
        """The served vectors of a request with these inline statistics, and the vectors computed afresh."""
        found = cache.lookup(ids, ["video"] * len(ids), inline_matrix(stats), np.arange(len(ids)))
        return model.item_vectors(found), computed(found.items)

    first, expected = vectors(stats)
    np.testing.assert_allclose(first, expected, atol=1e-6)
    assert asked == [20]
    again, _ = vectors(stats)  # the same statistics: every vector from the cache
    assert np.array_equal(again, first) and asked == [20]
    changed = [{"exp_1h": 500.0, "ctr_1d": 0.1}] * 3 + stats[3:]
    got, expected = vectors(changed)  # three rows changed: only they are computed again
    assert asked == [20, 3]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.array_equal(got[3:], first[3:]) and not np.allclose(got[:3], first[:3])
    table = cache.lookup(ids, ["video"] * 20)  # the table's features (none in Redis: the defaults)
    np.testing.assert_allclose(model.item_vectors(table), computed(table.items), atol=1e-6)
    assert asked == [20, 3, 20]
    vectors(changed)  # inline again: the table's vectors were cached in between
    # a slot another item holds now: the same statistics do not give that item the cached vector
    slot = cache.slot_of.pop("w5")
    cache.slot_of["other"], cache.id_of[slot], cache.item_idx[slot] = slot, "other", 12345
    got, expected = vectors(changed[5:6], ["other"])
    assert asked == [20, 3, 20, 20, 1]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_the_refresh_reads_the_stale_rows_of_several_requests_in_one_round_trip(redis_client, monkeypatch):
    import router.features

    monkeypatch.setattr(router.features, "REFRESH_GATHER_S", 0.5, raising=False)
    now_ms = int(time.time() * 1000)
    ItemStats(redis_client, prefix=REDIS_PREFIX).record([(f"g{n}", "exp", now_ms - 5 * MIN) for n in range(30)])
    cache = FeatureCache(redis_client, prefix=REDIS_PREFIX, stats_period_s=0.05, stats_settle_s=0.0)
    parts = [[f"g{n}" for n in range(start, start + 10)] for start in (0, 10, 20)]
    for part in parts:
        cache.lookup(part, ["video"] * 10)  # never seen: read at once
    time.sleep(0.15)
    reads = []
    read = cache.reader.read
    monkeypatch.setattr(cache.reader, "read", lambda ids, *a, **kw: reads.append(list(ids)) or read(ids, *a, **kw))
    for part in parts:  # three requests, each finding its ten rows stale
        cache.lookup(part, ["video"] * 10)
    deadline = time.monotonic() + 10
    while cache.pending.any() and time.monotonic() < deadline:
        time.sleep(0.05)
        cache.lookup(["g0"], ["video"])  # applies the finished reads
    cache.stop()
    assert sorted(reads[0]) == sorted(sum(parts, []))  # the three requests' rows in one read
    # after it only the probe's own row, when a loaded machine let it go stale again (its period is 50 ms)
    assert all(later == ["g0"] for later in reads[1:]), reads
    assert not cache.pending.any()


def test_rows_are_read_again_once_per_bucket_close_spread_over_the_minute(redis_client, monkeypatch):
    """Counts change when a minute bucket closes: a row is not read again before the next close has
    settled, and the rows read together come due spread over the minute after it, not in one instant."""
    clock = [6010.0]  # wall and monotonic alike: 10 s after the close at 6000 (a whole minute)
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])  # the cache's clocks (threading keeps its own)
    monkeypatch.setattr(time, "time", lambda: clock[0])
    cache = FeatureCache(redis_client, prefix=REDIS_PREFIX)
    ids = [f"j{n}" for n in range(1000)]
    cache.put(ids, [{"exp_1h": 1.0}] * 1000)  # read 10 s after a close: it saw it settled
    due = cache.refresh_at[[cache.slot_of[i] for i in ids]]
    assert due.min() >= 6060 + STATS_SETTLE_S and due.max() < 6120  # once, after the next close settled
    share = [float((due < 6060 + STATS_SETTLE_S + f * (60 - STATS_SETTLE_S)).mean()) for f in (0.25, 0.5, 0.75)]
    np.testing.assert_allclose(share, [0.25, 0.5, 0.75], atol=0.02)  # evenly over the rest of the minute
    clock[0] = 6062.0  # 2 s after a close: the read may miss its late writes
    cache.put(ids, [{"exp_1h": 2.0}] * 1000)
    due = cache.refresh_at[[cache.slot_of[i] for i in ids]]
    assert due.min() >= 6060 + STATS_SETTLE_S and due.max() < 6120  # read again once it settled
    stale = cache.lookup(ids, ["video"] * 1000)  # none due yet: nothing queued
    cache.stop()
    assert not cache.pending[stale.slots].any()


def test_a_request_with_inline_statistics_scores_as_the_per_item_featurization(redis_client):
    from feature_store.featurize import featurize_user
    from feature_store.policies import score_policy
    from router.prerank import parse_request, score

    rng = np.random.default_rng(1)
    stats = [{"exp_1h": float(rng.integers(0, 500)), "ctr_1d": float(rng.random()), "unused": 1.0} if n % 3 else {}
             for n in range(60)]
    cands = [{"item_id": f"q{n}", "content_type": ["video", "news"][n % 2], **({"features": s} if s else {})}
             for n, s in enumerate(stats)]
    req = parse_request({"request_id": "r", "user_id": "u", "k": 10, "budget_fraction": 0.3, "candidates": cands,
                         "user_features": {"history": ["q1", "q2"]}}, max_candidates=100)
    model = build(LoadedVersion(1, tiers_of(seed=5), {"version": 1}))
    cache = FeatureCache(redis_client, prefix=REDIS_PREFIX)
    out = score(model, cache, req)
    items = featurize_items([c["item_id"] for c in cands], [c["content_type"] for c in cands], stats)
    user = featurize_user("u", {"history": ["q1", "q2"]})
    expected, routed = score_policy(
        "damr", 10, 18,
        light=lambda: model.light.score(model.light.user_vector(user), model.light.item_vectors(items), items.dense),
        expressive=lambda rows: model.expressive.score(user, items.take(rows)))
    top = np.argsort(-expected, kind="stable")[:10]
    assert [i["item_id"] for i in out["items"]] == [f"q{n}" for n in top]
    np.testing.assert_allclose([i["score"] for i in out["items"]], expected[top], rtol=1e-6)
    assert out["expressive_evals"] == len(routed) == 18


def test_user_histories_are_cached_refreshed_in_the_background_and_bounded(redis_client):
    redis_client.set(user_features_key("w", REDIS_PREFIX), b'{"history": ["a", "b"]}')
    cache = FeatureCache(redis_client, prefix=REDIS_PREFIX, ttl_s=0.05, user_max_bytes=5_000)
    assert cache.user_features("w") == {"history": ["a", "b"]}
    redis_client.set(user_features_key("w", REDIS_PREFIX), b'{"history": ["c"]}')
    time.sleep(0.1)
    assert cache.user_features("w") == {"history": ["a", "b"]}  # stale: served, re-read queued
    deadline = time.monotonic() + 10
    while cache.user_features("w") != {"history": ["c"]} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cache.user_features("w") == {"history": ["c"]}
    for n in range(50):
        redis_client.set(user_features_key(f"x{n}", REDIS_PREFIX), b'{"history": ["' + b"h" * 200 + b'"]}')
        cache.user_features(f"x{n}")
    cache.stop()
    assert cache.user_bytes <= 5_000 and "x49" in cache.users and "x0" not in cache.users


def test_the_router_serves_the_user_by_item_features_the_streams_assemble(redis_client):
    """What the streams worker recorded of a user (shown, clicked; one before the request, one after)
    gives the router the same ``user_seen``/``user_clicked``/``in_history`` as the streams' own read
    for the sample (before: the router served 0 for the first two, the model trained on their values)."""
    now_ms = int(time.time() * 1000)
    UserItems(redis_client, REDIS_PREFIX).record([
        ("w", "a", SHOWN, now_ms - 60_000), ("w", "a", CLICKED, now_ms - 50_000), ("w", "b", SHOWN, now_ms - 1_000),
        ("w", "c", SHOWN, now_ms + 60_000)])  # after the request: not seen as of it
    redis_client.set(user_features_key("w", REDIS_PREFIX), b'{"history": ["d"]}')
    ids = ["a", "b", "c", "d", "e"]
    cache = FeatureCache(redis_client, prefix=REDIS_PREFIX)
    stored = cache.user_features("w")
    dense = np.zeros((len(ids), len(FEATURES)), np.float32)
    mark_user_items(dense, ids, stored["history"], stored, now_ms)
    streams = UserItems(redis_client, REDIS_PREFIX).read("w", ids, now_ms, stored["history"])
    for name in ("user_seen", "user_clicked", "in_history"):
        assert dense[:, FEATURES.index(name)].tolist() == [row[name] for row in streams], name
    assert dense[:, FEATURES.index("user_seen")].tolist() == [1, 1, 0, 0, 0]
    assert dense[:, FEATURES.index("user_clicked")].tolist() == [1, 0, 0, 0, 0]


def test_the_users_items_among_the_candidates_are_found_from_the_table_as_from_the_candidates(redis_client):
    """``rows_among`` (a probe per item of the user's) marks what the per-candidate probe marks: items of
    the user that are candidates, in the table but not in this request (a row of an earlier, larger
    request left in the scratch), or never seen."""
    cache = FeatureCache(redis_client, prefix=REDIS_PREFIX)
    rng = np.random.default_rng(5)
    universe = [f"i{n}" for n in range(3000)]
    cache.lookup(universe[:2500], ["video"] * 2500)  # an earlier request: every slot's scratch row set
    for trial in range(20):
        ids = [universe[i] for i in rng.choice(3000, int(rng.integers(1, 400)), replace=False)]
        found = cache.lookup(ids, ["video"] * len(ids))
        mine = [universe[i] for i in rng.choice(3000, 300, replace=False)] + ["never-seen"]
        stored = {"shown": dict.fromkeys(mine[:200], 5.0), "clicked": dict.fromkeys(mine[150:250], 6.0)}
        history = mine[250:]
        by_table, by_candidates = (np.zeros((len(ids), len(FEATURES)), np.float32) for _ in range(2))
        mark_user_items(by_table, ids, history, stored, 10.0, functools.partial(cache.rows_among, found))
        mark_user_items(by_candidates, ids, history, stored, 10.0)
        np.testing.assert_array_equal(by_table, by_candidates, err_msg=f"trial {trial}")
        met, rows = cache.rows_among(found, mine)
        assert sorted(met) == sorted(set(mine) & set(ids)) and [ids[r] for r in rows] == met


@pytest.mark.parametrize(("ids", "first"), [
    (["a", "b", "a"], (2, 0)),  # both seen before: their slots repeat
    (["x1", "x2", "b", "x1"], (3, 0)),  # both unseen
    (["b", "x3", "c", "x3", "b"], (3, 1)),  # unseen and seen: the first repeat is named
])
def test_the_lookup_refuses_repeated_ids_before_it_changes_the_table(redis_client, ids, first):
    """The typed decode leaves the duplicate check to the lookup (router.request): a repeated id, seen or
    not, is refused with the index and first index parse_request names, and no slot is allocated for it."""
    cache = FeatureCache(redis_client, prefix=REDIS_PREFIX, capacity=1000)
    cache.put(["a", "b", "c"], [{}] * 3)
    cache.lookup(["a", "b", "c", "d"], ["video"] * 4)  # d: seen, and a stale scratch row for the check below
    table = dict(cache.slot_of)
    with pytest.raises(DuplicateCandidate, match=rf"^candidates\[{first[0]}\]\.item_id: duplicate of "
                                                 rf"candidates\[{first[1]}\]$") as refused:
        cache.lookup(ids, ["video"] * len(ids))
    assert (refused.value.index, refused.value.first) == first
    assert cache.slot_of == table
    found = cache.lookup(["d", "c", "b", "a"], ["video"] * 4)  # distinct ids after a refusal: still served
    assert found.slots.tolist() == [table[i] for i in "dcba"]
