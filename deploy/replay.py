"""`hap replay`: a MIND-layout log through the running pipeline, with the learner's live quality.

The log's requests go through Kafka (`hap simulate --dataset`) -> streams -> learner (and the
router, which serves what the learner publishes). The command waits until the learner has
trained every group the streams emitted (the manifest's ``samples_seen`` against the groups read
back from ``hap.samples``, within ``--timeout``), then writes a report: coverage (groups per
request sent), the learner's progressive exposed GAUC per tier and DAMR budget from the published
manifest, and the demo's freshness and stage figures; next to them, `hap eval`'s figures on the
same requests (:mod:`deploy.agreement`). See docs/replay.md.

The components write the replay's own Redis database (``--redis-db``, flushed first), so that the
item statistics and model of an earlier run or of the demo do not leak into this one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from deploy.demo import Run, pipeline_report, scrape_or_none, start_run
from deploy.evaluation.evaluate import BATCH_GROUPS, BUDGETS
from deploy.logging_config import as_log_line
from deploy.pipeline import Component
from deploy.progress import Progress
from feature_store.registry import DEFAULT_METHOD, METHODS

#: how the replayed events are stamped: the log's own times (shifted), or the wall clock when sent
CLOCKS = ("log", "wall")
#: seconds between two progress polls
POLL_S = 2.0
#: seconds the router is given to serve the last version (its freshness is observed when it loads one)
SERVE_WAIT_S = 60.0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay")
    p.add_argument("--dataset", type=Path, required=True, help="directory with behaviors.tsv[.gz] and news.tsv[.gz]")
    p.add_argument("--requests", type=int, default=5000, help="the log's first N requests (in time order)")
    p.add_argument("--report", type=Path, default=Path("out/replay/report.json"), help="where the report is written")
    p.add_argument("--rate", type=float, default=1000.0, help="events per second sent (0: as fast as possible)")
    p.add_argument("--clock", choices=CLOCKS, default="log",
                   help="log (default): events carry the log's own times shifted by whole hours so the log ends "
                        "before sending starts (`hap simulate --log-time`), so the item statistics' windows close "
                        "by the log's clock as in `hap eval`; wall: events carry the wall clock at --rate (a week of "
                        "log in minutes: the day window's buckets never close)")
    p.add_argument("--candidates", type=int, default=400, help="candidates per request (`hap eval`'s default)")
    p.add_argument("--seed", type=int, default=0, help="the replay's and the learner's seed")
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD, help="the learner's training method")
    p.add_argument("--window", type=float, help="join window, seconds (default: the streams' setting)")
    p.add_argument("--lateness", type=float, help="allowed lateness, seconds (default: the streams' setting)")
    p.add_argument("--blocks", type=int, default=10, help="time blocks of the offline intervals")
    p.add_argument("--redis-db", type=int, default=1, help="the Redis database the replay writes (flushed first)")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="seconds to wait, once the log is sent, for the streams and the learner to finish")
    p.add_argument("--no-offline", action="store_true", help="skip `hap eval`'s figures (live only)")
    p.add_argument("--keep-stack", action="store_true", help="leave the stack running if this command started it")


def with_database(url: str, db: int) -> str:
    """``url`` pointing at Redis database ``db``.

    >>> with_database("redis://127.0.0.1:6379/0", 3)
    'redis://127.0.0.1:6379/3'
    """
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{db}"))


def run(args: argparse.Namespace) -> int:
    from deploy.settings import Settings

    started = time.monotonic()
    redis_url = with_database(Settings.load().redis_url, args.redis_db)
    pipeline = start_run("replay", redis_url)
    settings = dataclasses.replace(pipeline.settings, redis_url=redis_url)
    settings.redis.client().flushdb()
    out = args.report.parent
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    window = [*(["--window", str(args.window)] if args.window is not None else []),
              *(["--lateness", str(args.lateness)] if args.lateness is not None else [])]
    components = [
        # in log time a window must wait for every partition (JoinConfig.align_partitions)
        Component("streams", ["streams", *window, *(["--align-partitions"] if args.clock == "log" else [])], logs,
                  pipeline.env),
        Component("learner", ["learner", "--method", args.method, "--seed", str(args.seed),
                              "--batch-groups", str(BATCH_GROUPS), "--budgets", ",".join(map(str, BUDGETS))],
                  logs, pipeline.env),
        Component("router", ["router"], logs, pipeline.env),
    ]
    sim = Component("simulate", [
        "simulate", "--dataset", str(args.dataset), "--requests", str(args.requests), "--rate", str(args.rate),
        "--candidates", str(args.candidates), "--seed", str(args.seed), "--duplicate-rate", "0", "--no-progress",
        *(["--log-time"] if args.clock == "log" else []), "--report", str(out / "simulate.json")], logs, pipeline.env)
    try:
        for c in components:
            c.start()
        for c in components:
            c.wait_http(pipeline.urls[c.name])
        sim.start()
        timings = drive(sim, components, pipeline, settings, args.requests, out / "simulate.json", args.timeout)
        report = pipeline_report(pipeline.urls, out / "simulate.json", settings)
    finally:
        for c in [sim, *components]:
            c.stop()
        if not (pipeline.already_up or args.keep_stack):
            pipeline.stack.down()
    report = replay_report(report, timings, args)
    report["seconds"] = round(time.monotonic() - started, 1)
    args.report.write_text(json.dumps(report, indent=2))
    print(summary(report))
    print(f"wrote {args.report}")
    return 0


@dataclasses.dataclass
class Timings:
    """What the run measured beside the components' metrics."""

    groups: list[Any]  #: the distinct groups the streams emitted (first copy of each id), in topic order
    send_s: float  #: from the first event sent to the simulator's exit
    assembled_s: float  #: from the first event sent to the last request's group
    trained_s: float  #: from the first event sent to the manifest that counts every group's samples


def drive(sim: Component, components: list[Component], pipeline: Run, settings: Any, requests: int,
          sim_report: Path, timeout_s: float) -> Timings:
    """Watch the run with progress lines until the learner has trained every group emitted; raise
    ``RuntimeError`` (naming what is missing) when a component dies or the wait passes ``timeout_s``."""
    from feature_store.model_store import ModelStore

    store = ModelStore(settings.redis.client(), prefix=settings.redis_prefix)
    t0 = time.monotonic()
    with Progress(requests, "replay", "groups") as progress:
        while sim.alive:
            _check_alive(components)
            progress.advance_to(min(progress.total, _groups(pipeline)), _status(pipeline, store))
            time.sleep(POLL_S)
        if sim.returncode != 0:
            raise RuntimeError(f"simulate failed; last log lines:\n{sim.log_tail()}")
        send_s = time.monotonic() - t0
        sent = json.loads(sim_report.read_text())["requests"]  # fewer than asked when the log is shorter
        progress.total = sent
        deadline = time.monotonic() + timeout_s
        quiet_since = None
        while True:  # the streams: every request's group, or nothing pending for a whole poll
            _check_alive(components)
            m = scrape_or_none(pipeline.urls["streams"])
            groups, pending = _groups(pipeline), (m.total("hap_streams_pending_requests") if m else 1)
            progress.advance_to(min(sent, groups), _status(pipeline, store))
            if groups >= sent and pending == 0:
                break
            quiet_since = (quiet_since or time.monotonic()) if pending == 0 else None
            if quiet_since is not None and time.monotonic() - quiet_since > 10 * POLL_S:
                break  # some requests gave no group (dead letters): nothing more will come
            if time.monotonic() > deadline:
                raise RuntimeError(f"the streams emitted {groups:.0f} groups of {sent} requests within "
                                   f"{timeout_s:.0f} s ({pending:.0f} pending); see {components[0].log_file}")
            time.sleep(POLL_S)
        assembled_s = time.monotonic() - t0
        emitted = read_groups(settings, pipeline.prefix + "samples")
        expected = sum(len(g.items) for g in emitted)
        while True:  # the learner: a published manifest that counts every emitted group's samples
            _check_alive(components)
            doc = store.manifest() or {}
            seen = doc.get("samples_seen", 0)
            progress.advance_to(min(sent, _groups(pipeline)), f"{_status(pipeline, store)}, "
                                f"trained {seen}/{expected} samples")
            if seen >= expected:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the learner's manifest counts {seen} of the {expected} samples in the "
                                   f"{len(emitted)} groups emitted after {timeout_s:.0f} s; see "
                                   f"{components[1].log_file}")
            time.sleep(POLL_S)
        trained_s = time.monotonic() - t0
        wait_served(pipeline, doc["version"], SERVE_WAIT_S)
    return Timings(emitted, send_s, assembled_s, trained_s)


def wait_served(pipeline: Run, version: int, timeout_s: float) -> bool:
    """Wait until the router serves ``version`` (or a later one); False when it did not within ``timeout_s``
    (the report then shows the version it served)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        m = scrape_or_none(pipeline.urls["router"])
        if m is not None and m.total("hap_router_model_version") >= version:
            return True
        time.sleep(0.5)
    return False


def read_groups(settings: Any, topic: str, timeout_s: float = 60.0) -> list[Any]:
    """Every distinct group on ``topic`` up to its end (a repeated id keeps its first copy)."""
    from kafka import KafkaConsumer, TopicPartition

    from streams.contract.schemas import decode_sample_group

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                             max_partition_fetch_bytes=8 << 20, **settings.kafka_security.client_options())
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        groups: dict[str, Any] = {}
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                for record in records:
                    group = decode_sample_group(record.value)
                    groups.setdefault(group.group_id, group)
        return list(groups.values())
    finally:
        consumer.close()


def replay_report(report: dict[str, Any], timings: Timings, args: argparse.Namespace) -> dict[str, Any]:
    """The demo's report of the run, with coverage, throughput and the offline comparison added."""
    from deploy.agreement import agreement, feature_agreement, offline_figures, summarize
    from deploy.evaluation.evaluate import offline_groups, run_counter

    sent = report["events"]["ranking"]
    live_groups = [g for g in timings.groups if not g.correction]
    requests = {g.request_id for g in live_groups}
    quality = report["quality"]
    out: dict[str, Any] = {
        "dataset": str(args.dataset), "command": " ".join(_argv(args)),
        "coverage": {"requests_sent": sent, "groups": len(requests),
                     "corrections": len(timings.groups) - len(live_groups),
                     "fraction": round(len(requests) / sent, 4) if sent else None},
        "live": {"quality": {n: {"gauc": q["gauc"], "exposed_auc": q["auc_vs"]["exp_neg"]} for n, q in quality.items()},
                 "ctr": summarize(run_counter(timings.groups, "ctr", args.seed, args.blocks))["ctr"]},
        "throughput": {"events_per_s": round(sum(report["events"][k] for k in ("ranking", "exposure", "feedback"))
                                             / timings.send_s, 1),
                       "groups_per_s": round(len(timings.groups) / timings.assembled_s, 1),
                       "samples_trained_per_s": round(sum(len(g.items) for g in timings.groups) / timings.trained_s, 1),
                       "send_s": round(timings.send_s, 1), "assembled_s": round(timings.assembled_s, 1),
                       "trained_s": round(timings.trained_s, 1)},
        **report,
        "clock": args.clock,
    }
    if args.clock == "log":  # event time is the log's (days back): its age at load is no model age
        out["log_shift_ms"] = json.loads((args.report.parent / "simulate.json").read_text()).get("log_shift_ms")
        out["model_age_s"] = {"p50": None, "p99": None}
    if args.no_offline:
        return out
    print(as_log_line(f"offline: hap eval's assembly of the same {sent} requests", "hap.replay"), file=sys.stderr,
          flush=True)
    groups, bodies = offline_groups("replay", args.seed, sent, args.dataset, args.candidates)
    print(as_log_line(f"offline: hap eval's {args.method} and ctr over the {len(timings.groups)} live groups",
                      "hap.replay"), file=sys.stderr, flush=True)
    on_live = offline_figures(timings.groups, bodies, args.method, args.seed, args.blocks)
    print(as_log_line(f"offline: hap eval's {args.method} and ctr over its own {len(groups)} groups", "hap.replay"),
          file=sys.stderr, flush=True)
    offline = offline_figures(groups, bodies, args.method, args.seed, args.blocks)
    live = {**out["live"]["quality"], "ctr": out["live"]["ctr"]}
    out["offline"] = {"live_groups": on_live, "eval": offline,
                      "exposed_with_stats": {"live": _with_stats(timings.groups), "eval": _with_stats(groups)},
                      "features_equal": feature_agreement(timings.groups, groups)}
    out["agreement"] = {"live_vs_offline_live_groups": agreement(live, on_live, on_live),
                        "live_vs_eval": agreement(live, offline, on_live)}
    return out


def _with_stats(groups: list[Any]) -> float:
    """The share of exposed items whose day window had seen an exposure (``exp_1d`` > 0) as of their request."""
    exposed = [it for g in groups for it in g.items if it.source in ("exp_pos", "exp_neg")]
    return round(sum(1 for it in exposed if it.features.get("exp_1d", 0) > 0) / max(len(exposed), 1), 4)


def summary(report: dict[str, Any]) -> str:
    """A few plain lines: coverage, exposed GAUC live against offline per scorer, freshness, throughput."""
    c, t = report["coverage"], report["throughput"]
    lines = [f"coverage: {c['groups']}/{c['requests_sent']} requests got a group ({c['fraction']:.1%})",
             "exposed GAUC       live     offline(live groups)  offline(hap eval)"]
    live = {**report["live"]["quality"], "ctr": report["live"]["ctr"]}
    off = report.get("offline", {})
    for name, q in live.items():
        cells = [_fmt(q.get("gauc"))]
        for key in ("live_groups", "eval"):
            f = off.get(key, {}).get(name)
            cells.append(f"{_fmt(f['gauc'])} ± {_fmt(f['gauc_ci95'])}" if f else "-")
        lines.append(f"  {name:16} {cells[0]:8} {cells[1]:21} {cells[2]}")
    equal = off.get("features_equal")
    if equal and equal["items"]:
        shares = equal["by_feature"]
        lines.append(f"exposed items whose features equal hap eval's as-of ones ({equal['items']} items): "
                     + ", ".join(f"{k} {shares[k]:.1%}" for k in ("exp_1d", "ctr_1d", "exp_10m", "age_h",
                                                                   "since_last_m", "user_seen")))
    lines.append(f"freshness p50/p99: {report['freshness_s']['p50']}/{report['freshness_s']['p99']} s; "
                 f"{t['events_per_s']} events/s sent, {t['groups_per_s']} groups/s, "
                 f"{t['samples_trained_per_s']} samples/s trained")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _groups(pipeline: Run) -> int:
    m = scrape_or_none(pipeline.urls["streams"])
    return int(m.total("hap_streams_groups_total", kind="group")) if m else 0


def _status(pipeline: Run, store: Any) -> str:
    m = {k: scrape_or_none(u) for k, u in pipeline.urls.items()}
    doc = store.manifest() or {}
    light = doc.get("metrics", {}).get("quality", {}).get("light", {}).get("gauc")
    return (f"events {m['streams'].total('hap_streams_events_total') if m['streams'] else 0:.0f}, "
            f"steps {m['learner'].total('hap_learner_steps_total') if m['learner'] else 0:.0f}, "
            f"version {doc.get('version', 0)}, live light GAUC {_fmt(light)}")


def _check_alive(components: list[Component]) -> None:
    for c in components:
        if not c.alive:
            raise RuntimeError(f"{c.name} died; last log lines:\n{c.log_tail()}")


def _argv(args: argparse.Namespace) -> list[str]:
    out = ["hap", "replay", "--dataset", str(args.dataset), "--requests", str(args.requests), "--rate", str(args.rate),
           "--clock", args.clock,
           "--candidates", str(args.candidates), "--seed", str(args.seed), "--method", args.method,
           "--blocks", str(args.blocks), "--report", str(args.report)]
    out += ["--window", str(args.window)] if args.window is not None else []
    out += ["--lateness", str(args.lateness)] if args.lateness is not None else []
    return out + (["--no-offline"] if args.no_offline else [])
