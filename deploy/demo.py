"""`hap demo`: the whole pipeline on the local stack, with live progress, a report and plots.

simulate -> streams -> learner -> router, with the simulator's pre-ranking stage calling the
live router (the loop closes). Every figure of the report is read from the components'
metrics or the model manifest after the run; see DESIGN.md section 3 for the fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from deploy.pipeline import Component
from deploy.progress import Progress
from deploy.scrape import Metrics, scrape
from deploy.settings import Settings, settings_env
from deploy.stack import Stack
from deploy.stack.services import write_targets
from feature_store.model_store import ModelStore
from feature_store.registry import DEFAULT_METHOD, METHODS, POLICIES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo")
    p.add_argument("--report", type=Path, default=Path("out/demo/report.json"), help="where the report is written")
    p.add_argument("--duration", type=float, default=120.0, help="seconds of simulated traffic")
    p.add_argument("--rate", type=float, default=600.0, help="events per second")
    p.add_argument("--candidates", type=int, default=1000, help="candidates per request")
    p.add_argument("--window", type=float, default=5.0, help="join window, seconds")
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD, help="the learner's training method")
    p.add_argument("--keep-stack", action="store_true", help="leave Kafka, Redis and Prometheus running")


@dataclasses.dataclass
class Run:
    """One run of the pipeline on the local stack: its own topic prefix (topics created) and data dir."""

    stack: Stack
    already_up: bool  #: the stack was running before (so it is left running)
    settings: Settings
    prefix: str
    env: dict[str, str]  #: the components' environment
    urls: dict[str, str]  #: each component's /metrics

    @property
    def router_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.router_port}"


def start_run(name: str, redis_url: str | None = None) -> Run:
    """Start the local stack unless it is up, create the topics of a prefix ``hap.<name><time>.``
    and point Prometheus at the components; ``redis_url`` overrides the stack's for the components."""
    settings = Settings.load()
    stack = Stack(settings)
    already_up = all(s.healthy for s in stack.status())
    print("stack: " + ("already running" if already_up else "starting Kafka (KRaft), Redis, Prometheus"))
    stack.up()
    settings = Settings.load()
    prefix = f"hap.{name}{int(time.time())}."
    env = settings_env(topic_prefix=prefix, data_dir=settings.data_dir / prefix.rstrip("."),
                       kafka_bootstrap=settings.kafka_bootstrap, redis_url=redis_url or settings.redis_url)
    write_targets(settings.data_dir, {"streams": f"127.0.0.1:{settings.streams_metrics_port}",
                                      "learner": f"127.0.0.1:{settings.learner_metrics_port}",
                                      "router": f"127.0.0.1:{settings.router_port}"})
    from streams.kafka.topics import ensure_topics

    ensure_topics(settings.kafka_bootstrap, prefix, settings.kafka_partitions, settings.kafka_security,
                  settings.kafka_replication)
    urls = {
        "streams": f"http://127.0.0.1:{settings.streams_metrics_port}/metrics",
        "learner": f"http://127.0.0.1:{settings.learner_metrics_port}/metrics",
        "router": f"http://127.0.0.1:{settings.router_port}/metrics",
    }
    return Run(stack, already_up, settings, prefix, env, urls)


def run(args: argparse.Namespace) -> int:
    pipeline = start_run("demo")
    stack, already_up, settings, env, urls = (pipeline.stack, pipeline.already_up, pipeline.settings,
                                              pipeline.env, pipeline.urls)
    router_url = pipeline.router_url
    out = args.report.parent
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    components = [
        Component("streams", ["streams", "--window", str(args.window), "--lateness", "1"], logs, env),
        Component("learner", ["learner", "--method", args.method], logs, env),
        Component("router", ["router", "--drain", "0"], logs, env),  # no balancer to drain from
    ]
    sim = Component("simulate", [
        "simulate", "--requests", "1000000", "--duration", str(args.duration), "--rate", str(args.rate),
        "--candidates", str(args.candidates), "--router-url", router_url, "--no-progress",
        "--report", str(out / "simulate.json")], logs, env)
    curves: list[dict[str, Any]] = []
    try:
        for c in components:
            c.start()
        for c in components:
            c.wait_http(urls[c.name])
        sim.start()
        _watch(sim, components, urls, router_url, args, curves)
        _drain(urls, args.window)
        report = pipeline_report(urls, out / "simulate.json", settings)
        report["router_policies"] = probe_policies(router_url, args.candidates)
        router_metrics = scrape_or_none(urls["router"])
    finally:
        for c in [sim, *components]:
            c.stop()
        if not (already_up or args.keep_stack):
            stack.down()
    args.report.write_text(json.dumps(report, indent=2))
    from deploy.plots import plot_demo

    plot_demo(out, report, curves, router_metrics)
    print(json.dumps(report))
    return 0


def scrape_or_none(url: str) -> Metrics | None:
    try:
        return scrape(url)
    except OSError:
        return None


def _watch(sim: Component, components: list[Component], urls: dict[str, str], router_url: str,
           args: argparse.Namespace, curves: list[dict[str, Any]]) -> None:
    """Live progress until the simulator ends; samples learning curves from the manifest."""

    settings = Settings.load()
    store = ModelStore(settings.redis.client(), prefix=settings.redis_prefix)
    started = time.monotonic()
    progress = Progress(int(args.duration), "demo", "s")  # plain lines every 10 s when not a terminal
    while sim.alive:
        time.sleep(2)
        for c in components:
            if not c.alive:
                raise RuntimeError(f"{c.name} died; last log lines:\n{c.log_tail()}")
        m = {k: scrape_or_none(u) for k, u in urls.items()}
        doc = store.manifest()
        if doc:
            curves.append({"t": time.monotonic() - started, "version": doc["version"],
                           **{f"{tier}": q for tier, q in doc["metrics"].get("quality", {}).items()}})
        fresh = m["router"].quantile("hap_router_freshness_seconds", 0.5) if m["router"] else None
        status = (
            f"events {m['streams'].total('hap_streams_events_total') if m['streams'] else 0:.0f} "
            f"groups {m['streams'].total('hap_streams_groups_total') if m['streams'] else 0:.0f} "
            f"steps {m['learner'].total('hap_learner_steps_total') if m['learner'] else 0:.0f} "
            f"version {m['router'].total('hap_router_model_version') if m['router'] else 0:.0f} "
            f"freshness p50 {fresh or 0:.2f}s")
        progress.advance_to(min(int(args.duration), int(time.monotonic() - started)), status)
    progress.close()
    if sim.returncode != 0:
        raise RuntimeError(f"simulate failed; last log lines:\n{sim.log_tail()}")


def _drain(urls: dict[str, str], window_s: float, timeout_s: float = 90.0) -> None:
    """Wait until every request's group is emitted, trained on and served."""
    deadline = time.monotonic() + timeout_s
    time.sleep(window_s + 2)
    while time.monotonic() < deadline:
        s, learner, router = (scrape_or_none(urls[k]) for k in ("streams", "learner", "router"))
        if s and learner and router:
            samples = s.total("hap_streams_samples_total")
            served = router.total("hap_router_model_version") == learner.total("hap_learner_model_version")
            if s.total("hap_streams_pending_requests") == 0 and learner.total("hap_learner_samples_total") \
                    >= samples and served:
                return
        time.sleep(1)


def probe_policies(router_url: str, n_candidates: int, requests: int = 60) -> list[dict[str, Any]]:
    """Client-side latency of each policy on the same requests (after the run, for the plot)."""
    import urllib.request

    import numpy as np

    rng = np.random.default_rng(0)
    bodies = [json.dumps({"request_id": f"probe-{i}", "user_id": f"u{i % 50}", "k": 100, "candidates": [
        {"item_id": f"i{j}", "content_type": "video"} for j in rng.choice(20000, n_candidates, replace=False)]})
        for i in range(requests)]
    rows = []
    for policy in POLICIES:
        latencies, evals = [], []
        for body in bodies:
            data = json.loads(body)
            data["policy"] = policy
            req = urllib.request.Request(f"{router_url}/v1/prerank", json.dumps(data).encode(),
                                         {"Content-Type": "application/json"})
            t0 = time.perf_counter()
            with urllib.request.urlopen(req, timeout=10) as resp:
                result = json.loads(resp.read())
            latencies.append((time.perf_counter() - t0) * 1000)
            evals.append(result["expressive_evals"])
        rows.append({"policy": policy, "candidates": n_candidates,
                     "p50_ms": round(float(np.percentile(latencies, 50)), 3),
                     "p99_ms": round(float(np.percentile(latencies, 99)), 3),
                     "expressive_evals": float(np.mean(evals))})
    return rows


def quantiles(m: Metrics, name: str, scale: float = 1.0, **labels: str) -> dict[str, float | None]:
    out = {}
    for key, q in (("p50", 0.5), ("p99", 0.99)):
        value = m.quantile(name, q, **labels)
        out[key] = None if value is None else round(value * scale, 4)
    return out


def pipeline_report(urls: dict[str, str], sim_report: Path, settings: Settings) -> dict[str, Any]:
    """The demo report's fields (DESIGN.md section 3) from the components' metrics, the simulator's
    report and the model manifest."""
    s, learner, router = (scrape(urls[k]) for k in ("streams", "learner", "router"))
    sim = json.loads(sim_report.read_text())
    manifest = ModelStore(settings.redis.client(), prefix=settings.redis_prefix).manifest() or {}
    by_source = {k: int(v) for k, v in s.by_label("hap_streams_samples_total", "source").items()}
    quality = {tier: {k: q[k] for k in ("auc", "gauc", "recall_at_k", "auc_vs", "k")}
               for tier, q in manifest["metrics"]["quality"].items()}
    frac_sum = router.total("hap_router_expressive_fraction_sum")
    frac_n = router.total("hap_router_expressive_fraction_count")
    return {
        "events": {"ranking": sim["ranking"], "exposure": sim["exposure"], "feedback": sim["feedback"],
                   "invalid": int(s.total("hap_streams_invalid_total"))},
        "samples": {"groups": int(s.total("hap_streams_groups_total", kind="group")),
                    "by_source": {k: by_source.get(k, 0) for k in ("exp_pos", "exp_neg", "rn", "prn", "gn")}},
        "learner": {"steps": int(learner.total("hap_learner_steps_total")),
                    "samples_trained": int(learner.total("hap_learner_samples_total")),
                    "versions_published": int(learner.total("hap_learner_publish_seconds_count"))},
        "freshness_s": quantiles(router, "hap_router_freshness_seconds"),
        "model_age_s": quantiles(router, "hap_router_model_age_at_load_seconds"),
        "router": {"requests": int(router.total("hap_router_request_seconds_count")),
                   **{f"{k}_ms": v for k, v in quantiles(router, "hap_router_request_seconds", 1000.0).items()},
                   "expressive_fraction": round(frac_sum / frac_n, 4) if frac_n else None},
        "quality": quality,
        "stages_s": {
            "event_to_sample": quantiles(s, "hap_streams_event_to_sample_seconds"),
            "sample_to_trained": quantiles(learner, "hap_learner_sample_to_trained_seconds"),
            "trained_to_published": quantiles(learner, "hap_learner_trained_to_published_seconds"),
            "published_to_loaded": quantiles(router, "hap_router_published_to_loaded_seconds"),
        },
        "model_version": manifest["version"],
        "simulated_seconds": round(sim["seconds"], 1),
        "cpu_count": os.cpu_count(),
    }
