"""The router over a real Redis: answers, client mistakes, readiness, every 5xx counted; its OpenAPI
document is valid, every answer matches it, and it agrees with the request validation."""

import asyncio
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate as validate_spec

from deploy.settings import REDIS_PREFIX
from feature_store.model_store import ModelStore
from router.prerank import BadRequest, TooManyCandidates, parse_request

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
    assert out[2][1] == "candidates[0].item_id: expected a non-empty string of at most 256 characters"
    assert big == 413


def test_repeated_ids_are_a_400_with_or_without_a_model_and_the_router_serves_on(redis_client):
    """The typed decode leaves the duplicate check to the feature lookup: the answer is parse_request's,
    before a model is loaded (ahead of the 503) and after, for ids the table holds and ids it does not."""
    dup = {**body(4), "candidates": [{"item_id": "i1"}, {"item_id": "x"}, {"item_id": "i2"}, {"item_id": "x"}]}

    async def go():
        async with serve(redis_client) as http:
            before = await http.post("/v1/prerank", json=dup)
            out = [(before.status, (await before.json())["error"])]
            publish(redis_client, 1)
            while (await http.get("/readyz")).status != 200:
                await asyncio.sleep(0.05)
            await http.post("/v1/prerank", json=body(4))  # i0..i3 now in the table
            for sent in (dup, {**body(4), "candidates": [*body(4)["candidates"], {"item_id": "i0"}]}):
                answer = await http.post("/v1/prerank", json=sent)
                out.append((answer.status, (await answer.json())["error"]))
            return out, (await http.post("/v1/prerank", json=body(4))).status

    out, after = asyncio.run(go())
    assert out == [(400, "candidates[3].item_id: duplicate of candidates[1]")] * 2 + [
        (400, "candidates[4].item_id: duplicate of candidates[0]")]
    assert after == 200


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


def test_every_response_is_counted_by_route_and_status_code(redis_client, monkeypatch):
    from router import metrics

    def counts() -> dict[tuple[str, str], float]:
        return {(s.labels["path"], s.labels["code"]): s.value for family in metrics.RESPONSES.collect()
                for s in family.samples if s.name.endswith("_total")}

    async def not_ready():
        async with serve(redis_client) as http:
            return [(await http.post("/v1/prerank", json=body())).status, (await http.get("/v1/model")).status]

    async def ready():
        async with serve(redis_client, max_candidates=100, max_bytes=64 << 10) as http:
            statuses = [(await http.post("/v1/prerank", json=body())).status for _ in range(3)]
            statuses.append((await http.post("/v1/prerank", data=b"{nope")).status)
            statuses.append((await http.post("/v1/prerank", json=body(101))).status)  # too many candidates
            statuses.append((await http.post("/v1/prerank", data=b"x" * (65 << 10))).status)  # body too large
            statuses.append((await http.get("/nowhere")).status)
            statuses.append((await http.get("/v1/prerank")).status)  # the route, not its method
            monkeypatch.setattr("router.app.score", lambda *a: 1 / 0)
            statuses.append((await http.post("/v1/prerank", json=body())).status)
            return statuses

    before = counts()
    assert asyncio.run(not_ready()) == [503, 503]
    publish(redis_client, 1)
    assert asyncio.run(ready()) == [200, 200, 200, 400, 413, 413, 404, 405, 500]
    grew = {key: n - before.get(key, 0.0) for key, n in counts().items() if n != before.get(key, 0.0)}
    readyz = {key: grew.pop(key) for key in list(grew) if key[0] == "/readyz"}  # serve() polls it until ready
    assert readyz and set(readyz) <= {("/readyz", "200"), ("/readyz", "503")}
    assert grew == {("/v1/prerank", "503"): 1, ("/v1/model", "503"): 1, ("/v1/prerank", "200"): 3,
                    ("/v1/prerank", "400"): 1, ("/v1/prerank", "413"): 2, ("/v1/prerank", "500"): 1,
                    ("other", "404"): 1, ("other", "405"): 1}


def test_every_response_names_the_served_version_and_v1_model_says_what_is_loaded(redis_client):
    async def before_a_model():
        async with serve(redis_client) as http:
            model = await http.get("/v1/model")
            health = await http.get("/healthz")
            return model.status, "X-Model-Version" in model.headers, "X-Model-Version" in health.headers

    async def with_a_model():
        async with serve(redis_client) as http:
            answers = [await http.post("/v1/prerank", json=body()), await http.post("/v1/prerank", data=b"{nope"),
                       await http.get("/readyz"), await http.get("/healthz"), await http.get("/metrics"),
                       await http.get("/nowhere"), await http.get("/v1/model")]
            return [(r.status, r.headers.get("X-Model-Version")) for r in answers], await answers[-1].json()

    assert asyncio.run(before_a_model()) == (503, False, False)
    version = publish(redis_client, 3)
    manifest = ModelStore(redis_client, prefix=REDIS_PREFIX).manifest()
    answers, info = asyncio.run(with_a_model())
    assert answers == [(status, str(version)) for status in (200, 400, 200, 200, 200, 404, 200)]
    assert info["version"] == version and set(info["tiers"]) == {"light", "expressive"}
    assert info["tiers"]["light"]["spec"] == manifest["tiers"]["light"]["spec"]
    assert info["tiers"]["expressive"]["kind"] == "full"
    assert info["trained_until_event_ts_ms"] == manifest["trained_until_event_ts_ms"]
    assert info["published_ts_ms"] == manifest["published_ts_ms"] <= info["loaded_ts_ms"]
    assert "rollback" not in info and info["pinned"] is False


def test_a_draining_router_is_not_ready_but_still_serves(redis_client):
    from router import metrics
    from router.drain import Drain

    publish(redis_client, 1)
    drain = Drain()

    async def go():
        async with serve(redis_client, drain=drain) as http:
            drain.begin()
            ready = await http.get("/readyz")
            answer = await http.post("/v1/prerank", json=body())
            return ready.status, await ready.json(), answer.status, answer.headers.get("Connection")

    before = metrics.ERRORS.labels("draining")._value.get()
    status, ready, served, connection = asyncio.run(go())
    assert (status, served, connection) == (503, 200, "close")  # clients reconnect, to a replica in rotation
    assert ready["reason"].startswith("draining")
    assert not list(response_schema("/readyz", "get", 503).iter_errors(ready))
    assert metrics.ERRORS.labels("draining")._value.get() - before == 1


# -- the contract: the OpenAPI document is valid, answers match it, and it agrees with the validation ------
SPEC_PATH = Path(__file__).resolve().parents[2] / "router" / "openapi.yaml"


def spec() -> dict:
    return yaml.safe_load(SPEC_PATH.read_text())


def schema_of(ref_or_schema: dict) -> OAS30Validator:
    """A validator of one schema of the spec, its ``$ref``s resolved against the whole document."""
    doc = spec()
    return OAS30Validator({**ref_or_schema, "components": doc["components"]})


def response_schema(path: str, method: str, status: int) -> OAS30Validator:
    resp = spec()["paths"][path][method]["responses"][str(status)]
    return schema_of(resp["content"]["application/json"]["schema"])


def test_the_spec_is_valid_openapi():
    validate_spec(spec())


def test_every_answer_matches_the_spec(redis_client, monkeypatch):
    async def before_a_model():
        async with serve(redis_client) as http:
            out = [("/v1/prerank", "post", await http.post("/v1/prerank", json=body())),
                   ("/readyz", "get", await http.get("/readyz")), ("/healthz", "get", await http.get("/healthz")),
                   ("/v1/model", "get", await http.get("/v1/model"))]
            return [(p, m, r.status, await r.json()) for p, m, r in out]

    async def with_a_model():
        async with serve(redis_client, max_candidates=100) as http:
            out = [("/v1/prerank", "post", await http.post("/v1/prerank", json=body(60, budget_count=7))),
                   ("/v1/prerank", "post", await http.post("/v1/prerank", json=body(60, budget_fraction=1.0))),
                   ("/readyz", "get", await http.get("/readyz")), ("/v1/model", "get", await http.get("/v1/model"))]
            for bad in (b"{nope", b'{"request_id": "r"}', b'{"request_id": "r", "user_id": "u", "candidates": '
                        b'[{"item_id": "a"}, {"item_id": "a"}]}'):
                out.append(("/v1/prerank", "post", await http.post("/v1/prerank", data=bad)))
            out.append(("/v1/prerank", "post", await http.post("/v1/prerank", json=body(101))))
            monkeypatch.setattr("router.app.score", lambda *a: 1 / 0)
            out.append(("/v1/prerank", "post", await http.post("/v1/prerank", json=body())))
            return [(p, m, r.status, await r.json()) for p, m, r in out]

    seen = asyncio.run(before_a_model())
    publish(redis_client, 1)
    seen += asyncio.run(with_a_model())
    assert sorted({s for _, _, s, _ in seen}) == [200, 400, 413, 500, 503]
    for path, method, status, doc in seen:
        errors = list(response_schema(path, method, status).iter_errors(doc))
        assert not errors, (path, status, doc, errors)
    by_status = [(s, d) for p, _, s, d in seen if p == "/v1/prerank"]
    assert by_status[1][1]["expressive_evals"] == 7 and by_status[2][1]["expressive_evals"] == 60  # count; all
    assert by_status[5][1]["error"] == "candidates[1].item_id: duplicate of candidates[0]"


REQUESTS = [  # (body, accepted by the router): the spec must say the same
    (body(3), True), (body(3, budget_fraction=1.0), True), (body(3, budget_count=5000), True),
    (body(3, budget=0.5), True), (body(3, budget_count=0, k=1), True), (body(3, user_features=None), True),
    (body(3, budget=1.5), False), (body(3, budget_fraction=1.01), False), (body(3, budget_count=5001), False),
    (body(3, budget_count=2.5), False), (body(3, budget_fraction=0.1, budget_count=2), False),
    (body(3, budget=0.1, budget_fraction=0.1), False), (body(3, budget_count=None), False),
    (body(3, k=0), False), (body(3, k=True), False), (body(3, policy="fast"), False), (body(3, policy=None), False),
    (body(3, request_id=""), False), (body(3, user_id="u" * 257), False), (body(0), False), (body(5001), False),
    (body(3, budget_fraction=True), False),
    ({**body(1), "candidates": [{"item_id": ""}]}, False), ({**body(1), "candidates": [{"item_id": 1}]}, False),
    ({**body(1), "candidates": [{"item_id": "a", "content_type": None}]}, False),
    ({**body(1), "candidates": [{"item_id": "a", "features": {"x": "1"}}]}, False),
    ({**body(1), "candidates": [{"item_id": "a", "features": None}]}, True),
    (body(3, user_features={"history": ["a", 1]}), False), (body(3, user_features={"history": ["a"] * 1001}), False),
    ({**body(1), "candidates": [{"item_id": "i" * 256, "content_type": "c" * 64}]}, True),
    ({**body(1), "candidates": [{"item_id": "i" * 257}]}, False),
    ({**body(1), "candidates": [{"item_id": "a", "content_type": "c" * 65}]}, False),
    ({**body(1), "candidates": [{"item_id": "a", "features": {"x": 3.4e38}}]}, True),
    ({**body(1), "candidates": [{"item_id": "a", "features": {"x": -3.5e38}}]}, False),
    (body(3, user_features={"history": ["h" * 257]}), False),
]


@pytest.mark.parametrize(("request_body", "ok"), REQUESTS)
def test_the_spec_and_the_validation_agree(request_body, ok):
    try:
        parse_request(request_body, max_candidates=5000)
        accepted = True
    except BadRequest:
        accepted = False
    assert accepted == ok
    assert schema_of({"$ref": "#/components/schemas/PrerankRequest"}).is_valid(request_body) == ok


def test_duplicate_candidates_are_rejected_a_rule_the_spec_states_in_words():
    dup = {**body(1), "candidates": [{"item_id": "a"}, {"item_id": "a"}]}
    with pytest.raises(BadRequest, match=r"^candidates\[1\]\.item_id: duplicate of candidates\[0\]$"):
        parse_request(dup, max_candidates=10)
    assert "unique" in spec()["components"]["schemas"]["Candidate"]["properties"]["item_id"]["description"].lower()


def test_too_many_candidates_is_its_own_error_kind_and_other_mistakes_are_not():
    """The router answers 413 by the error's type: only the candidate cap raises TooManyCandidates."""
    with pytest.raises(TooManyCandidates, match=r"^candidates: 11 exceed the cap of 10$"):
        parse_request(body(11), max_candidates=10)
    with pytest.raises(BadRequest) as other:
        parse_request({**body(1), "k": "ten"}, max_candidates=10)
    assert not isinstance(other.value, TooManyCandidates)


_values = (st.none() | st.booleans() | st.integers(-3, 6000)
           | st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x != int(x))
           | st.text(max_size=3) | st.lists(st.text(min_size=1, max_size=2), max_size=2)
           | st.dictionaries(st.text(min_size=1, max_size=2), st.integers(-2, 2), max_size=2))
_FIELDS = ["request_id", "user_id", "user_features", "candidates", "k", "policy", "budget_fraction", "budget_count",
           "budget"]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(_FIELDS), _values, st.booleans(), st.sampled_from(["item_id", "content_type", "features"]))
def test_the_spec_and_the_validation_agree_on_mutated_bodies(field, value, in_candidate, candidate_field):
    request_body = body(3, budget_fraction=0.5)
    if in_candidate:
        request_body["candidates"][1][candidate_field] = value
    elif field in ("budget_fraction", "budget_count", "budget"):
        request_body.pop("budget_fraction")
        request_body[field] = value
    else:
        request_body[field] = value
    try:
        parse_request(request_body, max_candidates=5000)
        accepted = True
    except BadRequest:
        accepted = False
    assert schema_of({"$ref": "#/components/schemas/PrerankRequest"}).is_valid(request_body) == accepted, request_body
