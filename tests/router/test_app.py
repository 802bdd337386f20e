"""The router over a real Redis: answers, client mistakes, readiness."""

import asyncio

from .conftest import body, publish, serve


def test_prerank_returns_top_k_with_tiers_and_version(redis_client):
    version = publish(redis_client, 1)

    async def go():
        async with serve(redis_client) as http:
            resp = await http.post("/v1/prerank", json=body(100, budget=0.3))
            return resp.status, await resp.json()

    status, out = asyncio.run(go())
    assert status == 200 and out["version"] == version and len(out["items"]) == 10
    scores = [i["score"] for i in out["items"]]
    assert scores == sorted(scores, reverse=True)
    assert out["expressive_evals"] == 30 and {i["tier"] for i in out["items"]} <= {"light", "expressive"}


def test_client_mistakes_are_4xx_with_reasons(redis_client):
    publish(redis_client, 1)

    async def go():
        async with serve(redis_client, max_candidates=100) as http:
            cases = [b"{nope", b'{"request_id": "r", "user_id": "u", "candidates": []}',
                     b'{"request_id": "r", "user_id": "u", "candidates": [{"item_id": 3}]}']
            out = [(r.status, (await r.json())["error"]) for r in
                   [await http.post("/v1/prerank", data=c) for c in cases]]
            big = await http.post("/v1/prerank", json=body(101))
            return out, big.status

    out, big = asyncio.run(go())
    assert [s for s, _ in out] == [400, 400, 400]
    assert out[0][1].startswith("body: invalid JSON") and out[1][1].startswith("candidates:")
    assert out[2][1] == "candidates[0].item_id: expected a non-empty string"
    assert big == 413


def test_not_ready_before_the_first_version(redis_client):
    async def go():
        async with serve(redis_client) as http:
            return (await http.get("/readyz")).status, (await http.post("/v1/prerank", json=body())).status

    assert asyncio.run(go()) == (503, 503)


def test_every_5xx_is_counted_and_a_failure_is_a_json_500(redis_client, monkeypatch):
    from router import metrics

    def errors(kind: str) -> float:
        return metrics.ERRORS.labels(kind)._value.get()

    def boom(*_args, **_kwargs):
        raise RuntimeError("scoring failed")

    async def not_ready():
        async with serve(redis_client) as http:
            return [(await http.post("/v1/prerank", json=body())).status, (await http.get("/readyz")).status]

    before = errors("not_ready")
    assert asyncio.run(not_ready()) == [503, 503]
    assert errors("not_ready") - before >= 2  # the serve() helper polls /readyz too
    publish(redis_client, 1)
    monkeypatch.setattr("router.app.score", boom)

    async def failing():
        async with serve(redis_client) as http:
            resp = await http.post("/v1/prerank", json=body())
            return resp.status, await resp.json()

    before = errors("internal")
    assert asyncio.run(failing()) == (500, {"error": "internal error"})
    assert errors("internal") - before == 1
