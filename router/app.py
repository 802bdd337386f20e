"""The router's HTTP service (aiohttp): ``POST /v1/prerank``, ``GET /v1/model``, health, readiness,
metrics, OpenAPI.

A client mistake is a 400 with the reason (413 above the body size cap), never a 5xx.
``/readyz`` answers 200 only once a model version is loaded, and 503 again while the router
drains before it stops (:mod:`router.drain`). Every response carries the served version in
``X-Model-Version`` once one is loaded (a pre-ranking answer: the version that scored it);
``GET /v1/model`` says what is loaded. Every 5xx is counted in ``hap_router_errors_total``: a 503
(no version loaded yet, on ``/v1/prerank``, ``/v1/model`` or ``/readyz``) as ``not_ready``, the
``/readyz`` 503 of a draining router as ``draining``, a failure inside a handler as ``internal``
(answered 500 with a JSON error body), any other 5xx as ``http_5xx``. Every response, whatever its
status, is counted in ``hap_router_responses_total{path, code}``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import redis
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

from feature_store.policies import DAMR_BUDGET
from router import metrics
from router.drain import Drain
from router.features import FeatureCache
from router.holder import ModelHolder, ServingModel
from router.prerank import BadRequest, TooManyCandidates, check_distinct, score
from router.request import decode_request
from router.timing import GC, RequestTiming

OPENAPI = Path(__file__).with_name("openapi.yaml")
HOLDER: web.AppKey[ModelHolder] = web.AppKey("holder", ModelHolder)
FEATURES: web.AppKey[FeatureCache] = web.AppKey("features", FeatureCache)
LIMITS: web.AppKey[dict] = web.AppKey("limits", dict)
DRAIN: web.AppKey[Drain] = web.AppKey("drain", Drain)
#: the response header naming the model version served
VERSION_HEADER = "X-Model-Version"
#: the response header of a request's stage timings (``server_timing=True``: router.timing)
SERVER_TIMING_HEADER = "Server-Timing"
log = logging.getLogger("hap.router")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def prerank(request: web.Request) -> web.Response:
    entered = time.perf_counter()
    limits = request.app[LIMITS]
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        metrics.ERRORS.labels("too_large").inc()
        return _json({"error": f"body exceeds {limits['max_bytes']} bytes"}, 413)
    timing = RequestTiming()  # service time starts once the body is in
    metrics.READ_SECONDS.observe(timing.started - entered)
    model = request.app[HOLDER].current
    try:
        req = decode_request(raw, max_candidates=limits["max_candidates"], policy=limits["policy"],
                             budget=limits["budget"])
        if model is None:  # refused as a client mistake before the 503, as score would refuse it
            check_distinct(req.item_ids)
    except orjson.JSONDecodeError as exc:
        metrics.ERRORS.labels("bad_request").inc()
        return _json({"error": f"body: invalid JSON ({exc})"}, 400)
    except BadRequest as exc:
        status = 413 if isinstance(exc, TooManyCandidates) else 400
        metrics.ERRORS.labels("too_large" if status == 413 else "bad_request").inc()
        return _json({"error": str(exc)}, status)
    if model is None:  # counted by count_server_errors, as every 5xx
        return _json({"error": "no model version loaded yet"}, 503)
    timing.mark("decode")
    try:
        result = score(model, request.app[FEATURES], req, timing)
    except BadRequest as exc:  # repeated ids, found by the feature lookup
        metrics.ERRORS.labels("bad_request").inc()
        return _json({"error": str(exc)}, 400)
    response = _json(result)
    timing.mark("encode")
    response.headers[VERSION_HEADER] = str(model.version)  # the version that scored it, even across a swap
    if limits["server_timing"]:
        response.headers[SERVER_TIMING_HEADER] = timing.header()
    metrics.REQUEST_SECONDS.labels(req.policy).observe(time.perf_counter() - timing.started)
    metrics.CANDIDATES.observe(len(req.candidates))
    metrics.EXPRESSIVE_FRACTION.observe(result["expressive_evals"] / len(req.candidates))
    return response


@web.middleware
async def track_in_flight(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count the requests in flight (the shutdown waits for them); while draining, close each connection after
    its answer, so that the client's next request goes to a replica in rotation."""
    drain = request.app[DRAIN]
    drain.in_flight += 1
    try:
        response = await handler(request)
    finally:
        drain.in_flight -= 1
    if drain.draining:
        response.force_close()
    return response


@web.middleware
async def count_responses(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every answer by route and status code (``path="other"`` for one the router does not serve)."""
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else "other"
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        metrics.RESPONSES.labels(path, str(exc.status)).inc()
        raise
    metrics.RESPONSES.labels(path, str(response.status)).inc()
    return response


@web.middleware
async def count_server_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every 5xx; a handler's exception becomes a counted 500 with a JSON error body."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 500:
            metrics.ERRORS.labels("http_5xx").inc()
        raise
    except Exception:  # noqa: BLE001 - whatever failed, the client gets a 500 and the operator a count
        log.exception("%s %s failed", request.method, request.path)
        metrics.ERRORS.labels("internal").inc()
        return _json({"error": "internal error"}, 500)
    if response.status >= 500:
        kind = "http_5xx"
        if response.status == 503:
            kind = "draining" if request.path == "/readyz" and request.app[DRAIN].draining else "not_ready"
        metrics.ERRORS.labels(kind).inc()
    return response


async def version_header(request: web.Request, response: web.StreamResponse) -> None:
    """Name the served version on every response (unless the handler named the one it used)."""
    model = request.app[HOLDER].current
    if model is not None and VERSION_HEADER not in response.headers:
        response.headers[VERSION_HEADER] = str(model.version)


async def healthz(_request: web.Request) -> web.Response:
    return _json({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    holder = request.app[HOLDER]
    model = holder.current
    if request.app[DRAIN].draining:
        return _json({"ready": False, "reason": "draining: the router is shutting down"}, 503)
    if model is None:
        return _json({"ready": False, "reason": "no model version loaded yet"}, 503)
    return _json({"ready": True, "version": model.version, "staleness_s": holder.staleness_s})


def describe(model: ServingModel, pin: dict | None = None) -> dict:
    """What ``GET /v1/model`` says of the served version: its manifest's identity, never the weights;
    ``pinned``: whether it is the version ``pin`` (``hap models pin``) holds."""
    manifest = model.loaded.manifest
    out = {
        "version": model.version,
        "tiers": {name: {"spec": entry.get("spec"), "kind": entry.get("kind")}
                  for name, entry in manifest.get("tiers", {}).items()},
        "trained_until_event_ts_ms": manifest.get("trained_until_event_ts_ms"),
        "trained_until_finalized_ts_ms": manifest.get("trained_until_finalized_ts_ms"),
        "published_ts_ms": manifest.get("published_ts_ms"),
        "samples_seen": manifest.get("samples_seen"),
        "loaded_ts_ms": int(model.loaded_at * 1000),
        "pinned": pin is not None and pin.get("version") == model.version,
    }
    if isinstance(manifest.get("rollback"), dict):
        out["rollback"] = manifest["rollback"]
    return out


async def model_info(request: web.Request) -> web.Response:
    holder = request.app[HOLDER]
    model = holder.current
    if model is None:
        return _json({"error": "no model version loaded yet"}, 503)
    return _json(describe(model, holder.pin))


async def metrics_endpoint(_request: web.Request) -> web.Response:
    """This process's metrics; with ``PROMETHEUS_MULTIPROC_DIR`` set (``hap router --workers N``), every worker's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(_request: web.Request) -> web.Response:
    return web.Response(text=OPENAPI.read_text(), content_type="application/yaml")


async def watch_loop_lag(interval_s: float = 0.05) -> None:
    """Observe how late a timer fires: the queueing a request meets behind the one being served."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(interval_s)
        metrics.LOOP_LAG.observe(max(0.0, loop.time() - started - interval_s))


def make_app(client: redis.Redis, *, prefix: str, policy: str = "damr", budget: float = DAMR_BUDGET,
             max_candidates: int = 5000, max_bytes: int = 4 << 20, poll_s: float = 2.0,
             holder: ModelHolder | None = None, features: FeatureCache | None = None,
             drain: Drain | None = None, server_timing: bool = False) -> web.Application:
    """Build the service over the Redis keys under ``prefix``; the holder's and the feature cache's
    threads start and stop with the app.
    Each new version computes the item vectors of the rows the feature cache holds before it serves.
    ``drain``: the state :func:`router.drain.serve` sets on SIGTERM (readiness answers 503 then).
    ``server_timing``: each pre-ranking answer names its stages' and CPU's milliseconds in a
    ``Server-Timing`` header (:mod:`router.timing`)."""
    app = web.Application(client_max_size=max_bytes, middlewares=[count_responses, track_in_flight,
                                                                           count_server_errors])
    app[DRAIN] = drain or Drain()
    app[HOLDER] = holder or ModelHolder(client, prefix=prefix, poll_s=poll_s)
    app[FEATURES] = features or FeatureCache(client, prefix=prefix)
    app[HOLDER].prepare = lambda model: model.warm(app[FEATURES])
    app[LIMITS] = {"policy": policy, "budget": budget, "max_candidates": max_candidates, "max_bytes": max_bytes,
                   "server_timing": server_timing}
    app.router.add_post("/v1/prerank", prerank)
    app.router.add_get("/v1/model", model_info)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/openapi.yaml", openapi)

    async def lifecycle(app: web.Application):  # noqa: ANN202
        app[HOLDER].start()
        app[FEATURES].start()
        GC.install()
        watcher = asyncio.create_task(watch_loop_lag())
        yield
        watcher.cancel()
        GC.uninstall()
        app[HOLDER].stop()
        app[FEATURES].stop()

    app.cleanup_ctx.append(lifecycle)
    app.on_response_prepare.append(version_header)
    return app
