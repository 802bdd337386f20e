"""End to end: simulate -> streams -> learner -> router on the real stack, scraped by a real
Prometheus; every dashboard panel's query returns data."""

import json
import time
import urllib.parse
import urllib.request

import orjson

from deploy.dashboards.definitions import all_queries
from deploy.pipeline import Component
from deploy.stack.process import free_port
from deploy.stack.services import write_targets
from streams.contract.schemas import ExposureEvent
from streams.kafka.producer import EventProducer
from streams.kafka.topics import ensure_topics

#: queries that cannot have data in this test, by a part of their expression, and why
NO_DATA_HERE = {
    "kafka_consumergroup_lag": "Strimzi's Kafka Exporter exports it; the local stack does not run one",
    "offset 2m": "compares with what was served 2 minutes earlier; the test's traffic is shorter",
}


def query(prometheus_url: str, expr: str) -> list:
    url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())["data"]["result"]


def post(url: str, body: bytes) -> int:
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_every_panel_has_data(kafka_bootstrap, redis_url, prometheus_url, hap_settings, topic_prefix, tmp_path):
    ports = {name: free_port() for name in ("streams", "learner", "router")}
    env = {"HAP_KAFKA_BOOTSTRAP": kafka_bootstrap, "HAP_REDIS_URL": redis_url, "HAP_TOPIC_PREFIX": topic_prefix,
           "HAP_DATA_DIR": str(tmp_path), "HAP_STREAMS_METRICS_PORT": str(ports["streams"]),
           "HAP_LEARNER_METRICS_PORT": str(ports["learner"]), "HAP_ROUTER_PORT": str(ports["router"])}
    ensure_topics(kafka_bootstrap, topic_prefix)
    write_targets(hap_settings.data_dir, {name: f"127.0.0.1:{p}" for name, p in ports.items()})
    router = f"http://127.0.0.1:{ports['router']}"
    parts = [Component("streams", ["streams", "--window", "1", "--lateness", "0.5"], tmp_path, env),
             Component("learner", ["learner", "--publish-interval", "0.5"], tmp_path, env),
             Component("router", ["router", "--poll", "0.5"], tmp_path, env)]
    try:
        for c in parts:
            c.start()
        parts[2].wait_http(f"{router}/healthz")
        sim = Component("simulate", ["simulate", "--requests", "400", "--rate", "1500", "--candidates", "300",
                                     "--items", "3000", "--router-url", router, "--no-progress"], tmp_path, env).start()
        with EventProducer(kafka_bootstrap, topic_prefix=topic_prefix) as producer:
            producer.send_raw("exposure", "bad", b"{broken")  # a dead letter
        assert sim.proc.wait(240) == 0, sim.log_tail()
        parts[2].wait_http(f"{router}/readyz", timeout_s=60)
        streams_metrics = f"http://127.0.0.1:{ports['streams']}/metrics"
        assert parts[0].wait_metric(streams_metrics, "hap_streams_groups_total", 400, timeout_s=120) >= 400
        with EventProducer(kafka_bootstrap, topic_prefix=topic_prefix) as producer:  # feedback after finalization
            late = ExposureEvent("req-1", "u", "i-none", int(time.time() * 1000), "feedback", click=True)
            producer.send_exposure(late)
        assert post(f"{router}/v1/prerank", b"{}") == 400  # a client error, counted
        body = {"request_id": "x", "user_id": "nobody", "k": 5,
                "candidates": [{"item_id": f"new{i}"} for i in range(20)]}
        for _ in range(30):
            assert post(f"{router}/v1/prerank", orjson.dumps(body)) == 200
        deadline = time.monotonic() + 45  # a few scrapes (every 2 s); slower on a loaded machine
        for _, _, expr in all_queries("1m"):
            query(prometheus_url, expr)  # every query parses (Prometheus answers 400 otherwise)
        empty = [(d, p, e) for d, p, e in all_queries("1m") if not any(m in e for m in NO_DATA_HERE)]
        while empty and time.monotonic() < deadline:
            time.sleep(2)
            empty = [(d, p, e) for d, p, e in empty if not query(prometheus_url, e)]
    finally:
        for c in parts:
            c.stop()
    assert empty == []
