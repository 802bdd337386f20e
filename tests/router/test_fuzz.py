"""Fuzzed bodies never make the router answer 5xx."""

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import body, publish, serve

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
candidate = st.fixed_dictionaries({"item_id": st.text(max_size=6) | st.integers()},
                                  optional={"features": json_values, "content_type": json_values})
valid = st.builds(lambda n, k, policy: body(n, k=k, policy=policy), st.integers(1, 30), st.integers(1, 40),
                  st.sampled_from(["light", "damr", "expressive_all"]))
bodies = valid | st.fixed_dictionaries(
    {}, optional={"request_id": json_values, "user_id": json_values, "k": json_values, "policy": json_values,
                  "budget": json_values, "candidates": st.lists(candidate, max_size=5) | json_values,
                  "user_features": json_values},
) | json_values


def test_fuzzed_bodies_get_2xx_or_4xx(redis_client):
    publish(redis_client, 3)

    async def check_all(examples):
        async with serve(redis_client) as http:
            return [(await http.post("/v1/prerank", json=b)).status for b in examples]

    collected = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(bodies)
    def collect(b):
        collected.append(b)

    collect()
    statuses = asyncio.run(check_all(collected))
    assert all(s < 500 for s in statuses), [(b, s) for b, s in zip(collected, statuses, strict=True) if s >= 500][:3]
    assert 200 in statuses and 400 in statuses
