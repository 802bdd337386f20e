"""The per-user store of what a user was shown and clicked: as of a time, and bounded."""

from deploy.settings import REDIS_PREFIX
from feature_store.user_items import CLICKED, SHOWN, UserItems, user_items_key


def test_only_events_strictly_before_the_read_count(redis_client):
    store = UserItems(redis_client, REDIS_PREFIX)
    store.record([("u1", "n1", SHOWN, 1_000), ("u1", "n1", CLICKED, 3_000), ("u1", "n1", SHOWN, 5_000)])
    [at_1000] = store.read("u1", ["n1"], 1_000, ())
    assert at_1000 == {"user_seen": 0.0, "user_clicked": 0.0, "in_history": 0.0}
    [at_2000, unseen] = store.read("u1", ["n1", "n2"], 2_000, ["n2"])
    assert (at_2000["user_seen"], at_2000["user_clicked"]) == (1.0, 0.0)
    assert (unseen["user_seen"], unseen["in_history"]) == (0.0, 1.0)
    assert store.read("u1", ["n1"], 4_000, ())[0]["user_clicked"] == 1.0
    assert redis_client.zscore(user_items_key("u1", REDIS_PREFIX), f"{SHOWN}:n1") == 1_000  # the first time is kept


def test_the_store_keeps_at_most_cap_items_per_user_and_expires(redis_client):
    store = UserItems(redis_client, REDIS_PREFIX, cap=5, ttl_s=60)
    store.record([("u1", f"n{i}", SHOWN, 1_000 * i) for i in range(12)])
    key = user_items_key("u1", REDIS_PREFIX)
    assert redis_client.zcard(key) == 5
    kept = [m.decode() for m in redis_client.zrange(key, 0, -1)]
    assert kept == [f"{SHOWN}:n{i}" for i in range(7, 12)]  # the oldest went first
    assert 0 < redis_client.ttl(key) <= 60
    assert store.read("u1", ["n0", "n11"], 20_000, ())[0]["user_seen"] == 0.0  # forgotten beyond the cap


def test_an_earlier_event_written_after_a_later_one_sets_the_first_time(redis_client):
    """Writes come in partition order, not event order (a partition ahead of another, a replay in log
    time): the earliest time wins, as in the as-of replay (`feature_store.asof`); before, the first
    write did, and a request between the two read the user as never shown the item."""
    store = UserItems(redis_client, REDIS_PREFIX)
    store.record([("u1", "n1", SHOWN, 9_000)])
    store.record([("u1", "n1", SHOWN, 1_000)])
    assert store.read("u1", ["n1"], 5_000, ())[0]["user_seen"] == 1.0
    assert redis_client.zscore(user_items_key("u1", REDIS_PREFIX), f"{SHOWN}:n1") == 1_000


def test_many_requests_are_read_in_one_round_trip_each_as_alone(redis_client, monkeypatch):
    store = UserItems(redis_client, REDIS_PREFIX)
    store.record([("u1", "n1", SHOWN, 1_000), ("u2", "n2", CLICKED, 1_000)])
    requests = [("u1", ["n1", "n2"], 2_000, ()), ("u3", [], 2_000, ()), ("u2", ["n2"], 2_000, ["n2"])]
    alone = [store.read(*request) for request in requests]

    def one_each(*args, **kwargs):
        raise AssertionError("one ZMSCORE round trip per request")

    monkeypatch.setattr(redis_client, "zmscore", one_each)  # the pipeline's own commands stay
    assert store.read_many(requests) == alone
    assert alone[0][0]["user_seen"] == 1.0 and alone[1] == [] and alone[2][0]["user_clicked"] == 1.0
