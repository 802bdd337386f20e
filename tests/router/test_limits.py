"""Issue 14 defect 9 and issue 18's honest metrics: every oversized or out-of-range input is a 400,
malformed data in Redis is a counted default (never a 5xx or a null score), the service time starts
once the body is read, and a router process runs its math on one thread."""

import asyncio
import math

import pytest
from prometheus_client import REGISTRY

from deploy.settings import REDIS_PREFIX
from feature_store.item_stats import ItemStats
from feature_store.user_features import user_features_key

from .conftest import body, publish, serve
from .test_app import schema_of


def errors(kind: str) -> float:
    return REGISTRY.get_sample_value("hap_router_errors_total", {"kind": kind}) or 0.0


def with_candidate(**fields) -> dict:
    out = body(3)
    out["candidates"][1] = {"item_id": "x", **fields}
    return out


OVERSIZED = {
    "item id of 257 characters": with_candidate(item_id="i" * 257),
    "content type of 65 characters": with_candidate(content_type="c" * 65),
    "history entry of 257 characters": body(3, user_features={"history": ["h" * 257]}),
    "statistic above float32": with_candidate(features={"exp_1h": 3.5e38}),
    "statistic far above float32": with_candidate(features={"ctr_1d": -1e300}),
    "integer above float32": with_candidate(features={"exp_1h": 10**39}),
    "65 statistics": with_candidate(features={f"s{n}": 1.0 for n in range(65)}),
    "statistic name of 65 characters": with_candidate(features={"s" * 65: 1.0}),
}


@pytest.mark.parametrize("name", sorted(OVERSIZED))
def test_oversized_or_out_of_range_input_is_a_400_naming_the_field(redis_client, name):
    publish(redis_client, 1)
    request_body = OVERSIZED[name]

    async def go():
        async with serve(redis_client) as http:
            data = __import__("json").dumps(request_body).encode()  # orjson writes no integer above 64 bits
            resp = await http.post("/v1/prerank", data=data, headers={"Content-Type": "application/json"})
            return resp.status, await resp.json()

    status, out = asyncio.run(go())
    assert status == 400, out
    assert out["error"].startswith(("candidates[1].", "user_features.history")), out
    if "65" not in name and "integer" not in name:  # the spec states every bound it can (OpenAPI 3.0)
        assert not schema_of({"$ref": "#/components/schemas/PrerankRequest"}).is_valid(request_body)


def test_values_at_the_bounds_are_accepted_and_score_finite(redis_client):
    publish(redis_client, 1)
    request_body = with_candidate(item_id="i" * 256, content_type="c" * 64,
                                  features={"exp_1h": 3.4e38, "ctr_1d": 3.4e38, "s" * 64: -3.4e38})
    request_body["user_features"] = {"history": ["h" * 256] * 1000}

    async def go():
        async with serve(redis_client) as http:
            resp = await http.post("/v1/prerank", json=request_body)
            return resp.status, await resp.json()

    status, out = asyncio.run(go())
    assert status == 200, out
    assert all(isinstance(i["score"], float) and math.isfinite(i["score"]) for i in out["items"])


def test_malformed_statistics_and_history_in_redis_are_counted_defaults(redis_client):
    publish(redis_client, 1)
    redis_client.hset(ItemStats(redis_client, REDIS_PREFIX).key("i1"), mapping={"nonsense": "1"})
    redis_client.hset(ItemStats(redis_client, REDIS_PREFIX).key("i2"), "m:exp:1", "many")
    histories = [b'{"history": 5}', b'{"history": [1, 2]}', b"not json", b"[1]",
                 b'{"history": ["' + b"h" * 300 + b'"]}']

    async def go():
        async with serve(redis_client) as http:
            out = []
            for n, history in enumerate(histories):
                redis_client.set(user_features_key(f"u{n}", REDIS_PREFIX), history)
                resp = await http.post("/v1/prerank", json=body(5, user_id=f"u{n}"))
                out.append((resp.status, await resp.json()))
            return out

    bad_stats, bad_users = errors("bad_item_stats"), errors("bad_user_features")
    answers = asyncio.run(go())
    assert [s for s, _ in answers] == [200] * len(histories), answers
    assert all(math.isfinite(i["score"]) for _, out in answers for i in out["items"])
    assert errors("bad_item_stats") - bad_stats == 2  # read once, then served from the table
    assert errors("bad_user_features") - bad_users == len(histories)


def test_service_time_starts_once_the_body_is_read(redis_client):
    publish(redis_client, 1)
    payload = __import__("orjson").dumps(body(50))

    async def slow_body():
        for n in range(0, len(payload), len(payload) // 4 + 1):
            yield payload[n:n + len(payload) // 4 + 1]
            await asyncio.sleep(0.15)

    def total(name: str) -> float:
        return sum(REGISTRY.get_sample_value(f"hap_router_{name}_sum", labels) or 0.0
                   for labels in ({"policy": "damr"}, {}))

    async def go():
        async with serve(redis_client) as http:
            resp = await http.post("/v1/prerank", data=slow_body(), headers={"Content-Type": "application/json"})
            return resp.status

    service, upload = total("request_seconds"), total("body_read_seconds")
    assert asyncio.run(go()) == 200
    assert total("body_read_seconds") - upload >= 0.3  # the slow upload is counted as upload ...
    assert total("request_seconds") - service < 0.3  # ... not as service time
    bounds = [s.labels["le"] for m in REGISTRY.collect() if m.name == "hap_router_request_seconds"
              for s in m.samples if s.name.endswith("_bucket")]
    assert "5.0" in bounds


def test_queueing_behind_a_busy_request_is_exported_apart(redis_client, monkeypatch):
    import time

    import router.app

    publish(redis_client, 1)
    real = router.app.score

    def slow(*args):
        time.sleep(0.4)  # holds the event loop, as a long request does
        return real(*args)

    def lag_sum() -> float:
        return REGISTRY.get_sample_value("hap_router_event_loop_lag_seconds_sum") or 0.0

    async def go():
        async with serve(redis_client) as http:
            monkeypatch.setattr("router.app.score", slow)
            before = lag_sum()
            assert (await http.post("/v1/prerank", json=body(5))).status == 200
            await asyncio.sleep(0.2)
            return lag_sum() - before

    assert asyncio.run(go()) >= 0.3
