"""Fuzzed bodies never make the router answer 5xx.

Each example is posted to a running router as Hypothesis draws it, so a failing body is shrunk
to a minimal one. Strings run past the router's length limits, numbers past float32 (and NaN and
infinities, which Python's JSON writer emits and a JSON parser must refuse), histories past
their cap.
"""

import asyncio
import threading

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.limits import ID_CHARS, MAX_HISTORY, MAX_STATS, NAME_CHARS

from .conftest import body, publish, serve

numbers = st.integers() | st.floats() | st.floats(min_value=-1e39, max_value=1e39)
# lengths drawn evenly up to past the limit (plain st.text mostly draws a few characters)
long_text = st.integers(0, ID_CHARS + 16).flatmap(lambda n: st.text(min_size=n, max_size=n))
json_values = st.recursive(
    st.none() | st.booleans() | numbers | long_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=NAME_CHARS + 8), inner, max_size=4),
    max_leaves=12,
)
statistics = st.dictionaries(st.text(max_size=NAME_CHARS + 8), numbers, max_size=MAX_STATS + 2)
candidate = st.fixed_dictionaries(
    {"item_id": long_text | st.integers()},
    optional={"features": statistics | json_values, "content_type": long_text | json_values},
)
history = st.lists(long_text, max_size=8) | st.lists(st.just("n1"), min_size=MAX_HISTORY - 1, max_size=MAX_HISTORY + 1)
well_formed = st.builds(
    lambda rid, uid, ids, k, policy, hist: {**body(0, request_id=rid, user_id=uid, k=k, policy=policy),
                                            "candidates": [{"item_id": i, "content_type": "video"} for i in ids],
                                            "user_features": {"history": hist}},
    long_text, long_text, st.lists(long_text, min_size=1, max_size=30), st.integers(1, 40),
    st.sampled_from(["light", "damr", "expressive_all"]), history)
valid = st.builds(lambda n, k, policy: body(n, k=k, policy=policy), st.integers(1, 30), st.integers(1, 40),
                  st.sampled_from(["light", "damr", "expressive_all"]))
bodies = valid | well_formed | st.fixed_dictionaries(
    {}, optional={"request_id": json_values, "user_id": json_values, "k": json_values, "policy": json_values,
                  "budget": json_values, "candidates": st.lists(candidate, max_size=5) | json_values,
                  "user_features": st.fixed_dictionaries({}, optional={"history": history}) | json_values},
) | json_values


class RouterThread:
    """A router app served on an event loop of its own thread; :meth:`post` answers a body's status."""

    def __init__(self, client) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.served = serve(client)

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def __enter__(self) -> "RouterThread":
        self.thread.start()
        self.http = self._run(self.served.__aenter__())
        return self

    def __exit__(self, *exc) -> None:
        self._run(self.served.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    def post(self, payload) -> int:
        async def send() -> int:
            return (await self.http.post("/v1/prerank", json=payload)).status

        return self._run(send())


def test_fuzzed_bodies_get_2xx_or_4xx(redis_client):
    publish(redis_client, 3)
    statuses = []
    with RouterThread(redis_client) as router:

        @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
        @given(bodies)
        def check(b):
            status = router.post(b)
            statuses.append(status)
            assert status < 500, (b, status)

        check()
    assert 200 in statuses and 400 in statuses
