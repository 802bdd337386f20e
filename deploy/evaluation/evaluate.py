"""`hap eval`: GHCL against non-learned and learned baselines, offline and in a closed loop.

Offline: sample groups are assembled by the real assembler (``streams.join.assembler``) from the
synthetic world or a MIND-layout replay, in time order, with item statistics counted as of
each request (cumulative counts stand in for the sliding windows), and every arm is scored
progressively: each batch before it is trained on. The stream is cut into ``--blocks``
disjoint time blocks; every arm is measured per block, so arms are compared *paired* on the
same block, with intervals over blocks (independent data), not only over seeds.

Arms (the ``method`` of a row):

- ``ctr``, ``popularity``: the smoothed item CTR and the exposure count as of the request
  (non-learned counters, ``policy="counter"``);
- ``mixed`` (pointwise BCE) and ``softmax`` (one within-request softmax over every negative):
  learned baselines with the same tiers, features and residual CTR prior as GHCL;
- ``ghcl`` and its ablations (``-no-harmonization``, ``-no-conflict-sampling``, ``-no-prior``,
  ``-no-gate``),
  each with the light tier, DAMR at several budgets and the expressive tier on everything.

Real labels come first: exposed GAUC and exposed AUC (``exp_pos`` against ``exp_neg``) are the
only metrics with true labels on a replayed log; metrics over constructed negatives
(``rn``/``prn``/``gn``) are diagnostics.

Closed loop: the simulated cascade's pre-ranker is the arm's own model, trained online on the
groups its own exposures produce. Arms run under common random numbers: the same users, the
same requests and the same click draw per (request, item), so their engagement is compared
paired, request by request.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from deploy.evaluation.paired import REFERENCES, block_bounds
from feature_store.policies import DAMR_BUDGET
from feature_store.registry import METHODS, POLICIES

BUDGETS = (0.05, 0.1, 0.2, 0.3, 0.5)
BATCH_GROUPS = 32
COST_REQUESTS = 40  # the last requests of each run, re-scored on the router's path to time each policy

#: learned arms: method name -> OnlineTrainer keywords
LEARNED: dict[str, dict[str, Any]] = {
    "ghcl": {"method": "ghcl"},
    "ghcl-no-harmonization": {"method": "ghcl", "harmonize_gradients": False},
    "ghcl-no-conflict-sampling": {"method": "ghcl", "conflict_sampling": False},
    "ghcl-no-prior": {"method": "ghcl", "prior": False},
    "ghcl-no-gate": {"method": "ghcl", "gate": False},
    "ghcl-rn-hard": {"method": "ghcl", "rn_path": "hard"},
    "ghcl-wide-both": {"method": "ghcl", "wide_paths": "both"},
    "ghcl-gate-easy": {"method": "ghcl", "gate_paths": "easy"},
    "ghcl-gate-both": {"method": "ghcl", "gate_paths": "both"},
    "ghcl-no-shrink": {"method": "ghcl", "residual_l2": 0.0},
    "ghcl-no-fallback": {"method": "ghcl", "mix_selection": False},
    "ghcl-linear-wide": {"method": "ghcl", "dense_hidden": 0},
    **{method: {"method": method} for method in METHODS if method != "ghcl"},
}
#: non-learned arms: method name -> the statistic, as of the request, that ranks the items
COUNTERS = {"ctr": "ctr_1d", "popularity": "exp_1d"}
#: the logistic regression over every as-of feature, trained online (``learner.counters``)
ONLINE_COUNTERS = "counters"
#: gradient-boosted trees over the same features, refitted on a schedule (``deploy.evaluation.boosted``):
#: a reference row, on demand (it needs LightGBM, the eval extra)
GBDT = "gbdt"
#: the arms ``hap eval`` runs when ``--methods`` is not given; the others are ablations, on demand
HEADLINE = ("ctr", ONLINE_COUNTERS, "mixed", "softmax", "ghcl")
#: closed-loop arms: (method, policy)
LOOP_ARMS = (("heuristic", "none"), ("ctr", "counter"), *((method, "light") for method in METHODS if method != "ghcl"),
             *(("ghcl", policy) for policy in POLICIES))
ALL_METHODS = (*COUNTERS, ONLINE_COUNTERS, GBDT, *LEARNED)
LOOP_BUDGET = DAMR_BUDGET
LOOP_KEEP = 200


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval")
    p.add_argument("--dataset", type=Path, help="a MIND-layout dataset to replay (default: synthetic only)")
    p.add_argument("--out", type=Path, default=Path("out/eval"), help="directory of results.json and the plots")
    p.add_argument("--markdown", type=Path,
                   help="also write the results page here, e.g. docs/results.md (default: none)")
    p.add_argument("--seeds", type=int, default=1, help="training seeds per arm (intervals come from the blocks)")
    p.add_argument("--blocks", type=int, default=10, help="disjoint time blocks of each offline stream")
    p.add_argument("--groups", type=int, default=1600, help="synthetic groups per run")
    p.add_argument("--replay-groups", type=int, default=0, help="replayed requests per run (0: the whole log)")
    p.add_argument("--loop-requests", type=int, default=600, help="closed-loop requests per arm and seed")
    p.add_argument("--candidates", type=int, default=400, help="candidates per request")
    p.add_argument("--methods", default=",".join(HEADLINE),
                   help=f"comma-separated arms to run offline (default: the headline arms); known: "
                        f"{', '.join(ALL_METHODS)}")


#: event-time gap between consecutive synthetic requests (the world has no clock of its own)
SYNTHETIC_GAP_MS = 1_000


def timed(request: Any, ts_ms: int) -> Any:
    """``request`` at event time ``ts_ms``: its ranking event and its events (offsets) timed from it."""
    from streams.simulator.cascade import Request

    return Request(dataclasses.replace(request.ranking, ts_ms=ts_ms),
                   [(offset, dataclasses.replace(e, ts_ms=ts_ms + offset)) for offset, e in request.events],
                   request.exposed)


def as_of_reader(store: Any, request: Any) -> Any:
    """The statistics reader of ``request``'s group: every feature as of the time it is asked for."""
    r = request.ranking
    history = (r.user_features or {}).get("history") or ()
    return lambda ids, at_ms: store.read(r.user_id, list(ids), at_ms, history)


def record_request(store: Any, request: Any) -> None:
    """Count ``request``'s events in ``store`` as the streams worker counts them in Redis."""
    from streams.join.assembler import AssemblerConfig
    from streams.join.features import event_counts, event_user_items

    dwell = AssemblerConfig().dwell_threshold_ms
    events = [e for _, e in request.events]
    store.record([c for e in events for c in event_counts(e, dwell)], [u for e in events for u in event_user_items(e)])


def assemble_request(request: Any, store: Any, pool: Any) -> Any:
    """The group the streams would emit for ``request`` (features as of its time); its events count from then on."""
    from streams.simulator.offline import group_of

    group = group_of(request, pool, as_of_reader(store, request))
    record_request(store, request)
    return group


def serving_body(request: Any, store: Any, k: int = 10) -> dict[str, Any]:
    """The router request of ``request``'s whole candidate list, its features inline as of then."""
    r = request.ranking
    feats = as_of_reader(store, request)([c.item_id for c in r.candidates], r.ts_ms)
    return {"request_id": r.request_id, "user_id": r.user_id, "user_features": r.user_features, "k": k,
            "candidates": [{"item_id": c.item_id, "content_type": c.content_type, "features": f}
                           for c, f in zip(r.candidates, feats, strict=True)]}


def offline_groups(source: str, seed: int, n: int, dataset: Path | None,
                   candidates: int) -> tuple[list[Any], list[dict[str, Any]]]:
    """The run's sample groups, in time order, and router requests of its last requests
    (``n`` = 0: every request of the log).

    On the replay the ``gn`` pool holds the items exposed before the request (the catalogue
    as the streams would know it then); on the synthetic world, the whole catalogue.
    """
    from deploy.progress import Progress
    from feature_store.asof import AsOfFeatures
    from streams.join.pool import CandidatePool
    from streams.simulator.replay import MindReplay
    from streams.simulator.world import CONTENT_TYPES, World

    pool, store = CandidatePool(), AsOfFeatures()
    replay = None
    if source == "replay":
        replay = MindReplay(dataset, seed=seed, n_candidates=candidates)
        n = n or len(replay)
        requests = (timed(r, r.ranking.ts_ms) for r, _ in zip(replay.requests(), range(n), strict=False))
    else:
        world = World(seed=seed, n_users=1000, n_items=10000)
        for i, t in enumerate(world.item_types):
            pool.add(world.item_id(i), CONTENT_TYPES[t])
        requests = (timed(world.request(i, candidates), i * SYNTHETIC_GAP_MS) for i in range(n))
    groups, bodies = [], []
    progress = Progress(n, f"features {source}", "requests") if n >= 5000 else None
    for i, r in enumerate(requests):
        if i >= n - COST_REQUESTS:
            bodies.append(serving_body(r, store))
        groups.append(assemble_request(r, store, pool))
        if replay is not None:
            for item in r.exposed:
                pool.add(item, replay.content_type(item))
        if progress is not None:
            progress.advance_to(i + 1, f"{i + 1} requests")
    if progress is not None:
        progress.close()
    return groups, bodies


def serving_cost(tiers: dict[str, Any], bodies: list[dict[str, Any]]) -> dict[str, float]:
    """CPU ms per request of each policy on the router's scoring path (numpy, no HTTP)."""
    import redis

    from feature_store.model_store import LoadedVersion
    from router.features import FeatureCache
    from router.holder import build
    from router.prerank import parse_request, score

    model = build(LoadedVersion(1, tiers, {"version": 1}))
    features = FeatureCache(redis.Redis(port=1), prefix="")  # every feature is inline: Redis is never asked
    policies = {"light": ("light", 0.0), "expressive_all": ("expressive_all", 0.0),
                **{f"damr@{b:g}": ("damr", b) for b in BUDGETS}}
    cost = {}
    for name, (policy, budget) in policies.items():
        requests = [parse_request({**b, "policy": policy, "budget": budget}, max_candidates=5000) for b in bodies]
        started = time.process_time()
        for request in requests:
            score(model, features, request)
        cost[name] = (time.process_time() - started) * 1000 / max(len(requests), 1)
    return cost


def _row(method: str, policy: str, budget: float, seed: int, report: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"method": method, "policy": policy, "budget": budget, "seed": seed, "auc": report["auc"],
            "gauc": report["gauc"], "exposed_auc": report["auc_vs"]["exp_neg"], "recall_at_k": report["recall_at_k"],
            "consistency_at_k": report["consistency_at_k"], "auc_vs": report["auc_vs"], **extra}


def run_counter(groups: list[Any], method: str, seed: int, blocks: int) -> list[dict[str, Any]]:
    """Rows of a non-learned arm: the items ranked by one as-of statistic, per block and overall."""
    from feature_store.featurize import ITEM_STAT_FEATURES
    from learner.batching import Batch
    from learner.progressive import ProgressiveMetrics
    from streams.contract.schemas import SOURCES

    column = ITEM_STAT_FEATURES.index(COUNTERS[method])
    parts = []
    for start, end in block_bounds(len(groups), blocks):
        metrics = ProgressiveMetrics(keep_requests=True)
        for i in range(start, end, BATCH_GROUPS):
            batch = Batch.from_groups(groups[i:min(i + BATCH_GROUPS, end)])
            metrics.update(batch.items["dense"][:, column].numpy().astype(np.float64), batch.group.numpy(),
                           np.array(SOURCES)[batch.source.numpy()], batch.rank_pos)
        parts.append(metrics)
    return _counter_rows(method, seed, parts)


def _counter_rows(method: str, seed: int, parts: list[Any]) -> list[dict[str, Any]]:
    """Per-block rows and the whole stream's row (with its per-request exposed AUCs) of a counter arm."""
    rows = [_row(method, "counter", 0.0, seed, m.report(), block=b, expressive_evals_per_request=0.0)
            for b, m in enumerate(parts)]
    total = parts[0]
    for m in parts[1:]:
        total = total.merge(m)
    return rows + [_row(method, "counter", 0.0, seed, total.report(), expressive_evals_per_request=0.0,
                        _per_request=total.per_request())]


def run_feature_arm(method: str, groups: list[Any], seed: int, blocks: int) -> list[dict[str, Any]]:
    """Rows of an arm over the as-of features alone, ``counters`` (``learner.counters``) or
    ``gbdt`` (``deploy.evaluation.boosted``), scored progressively, per block and overall."""
    from deploy.evaluation.boosted import RefittedGBDT
    from deploy.progress import Progress
    from learner.counters import OnlineCounters

    arm, parts = (OnlineCounters(seed=seed) if method == ONLINE_COUNTERS else RefittedGBDT(seed=seed)), []
    with Progress(len(groups), f"train {method}", "groups") as progress:
        for start, end in block_bounds(len(groups), blocks):
            for i in range(start, end, BATCH_GROUPS):
                arm.step(groups[i:min(i + BATCH_GROUPS, end)])
            parts.append(arm.take_metrics())
            progress.advance_to(end, f"block {len(parts)}/{blocks}")
    return _counter_rows(method, seed, parts)


def run_learned(groups: list[Any], bodies: list[dict[str, Any]], method: str, seed: int,
                blocks: int) -> tuple[list[dict[str, Any]], list[float]]:
    """Rows of a learned arm (every policy, per block and overall) and its per-step gradient cosines."""
    from deploy.progress import Progress
    from learner.progressive import ProgressiveMetrics
    from learner.trainer import OnlineTrainer

    trainer = OnlineTrainer(seed=seed, extra_budgets=BUDGETS, measure_conflict=True, keep_requests=True,
                            **LEARNED[method])
    cosines, started = [], time.process_time()
    parts = []
    with Progress(len(groups), f"train {method}", "groups") as progress:
        for start, end in block_bounds(len(groups), blocks):
            for i in range(start, end, BATCH_GROUPS):
                report = trainer.step(groups[i:min(i + BATCH_GROUPS, end)])
                cosines.append(report.grad_cosine if report.grad_cosine is not None else float("nan"))
            parts.append((end - start, *trainer.take_metrics()))
            progress.advance_to(end, f"block {len(parts)}/{blocks}")
    cpu_ms = (time.process_time() - started) * 1000 / len(groups)
    cost = serving_cost({n: t.export() for n, t in trainer.tiers().items()}, bodies)
    mean_items = float(np.mean([len(g.items) for g in groups]))
    rows = []
    for block in [*range(len(parts)), None]:
        chosen = parts if block is None else [parts[block]]
        n = sum(p[0] for p in chosen)
        for name in chosen[0][1]:
            if name == "damr":
                continue
            metrics = ProgressiveMetrics(keep_requests=True)
            for p in chosen:
                metrics.merge(p[1][name])
            budget = float(name.split("@")[1]) if "@" in name else (1.0 if name == "expressive_all" else 0.0)
            evals = (sum(p[2][name] for p in chosen) / n if "@" in name else
                     mean_items if name == "expressive_all" else 0.0)
            extra = {"expressive_evals_per_request": round(evals, 2)}
            if block is None:
                extra |= {"serve_cpu_ms_per_request": round(cost[name], 3),
                          "train_cpu_ms_per_request": round(cpu_ms, 3), "_per_request": metrics.per_request()}
            else:
                extra["block"] = block
            rows.append(_row(method, name.split("@")[0], budget, seed, metrics.report(), **extra))
    return rows, cosines


def run_closed_loop(arm: tuple[str, str], seed: int, requests: int, candidates: int) -> dict[str, Any]:
    """Engagement per request of the exposures chosen through ``arm``'s own pre-ranker (online-trained
    for a learned arm), under common random numbers: arms of one seed see the same users, requests
    and click draws."""
    import torch

    from feature_store.asof import AsOfFeatures
    from feature_store.featurize import ITEM_STAT_FEATURES, featurize_items, featurize_user
    from feature_store.policies import budget_count, score_policy
    from learner.models import item_tensors, user_tensors
    from learner.trainer import OnlineTrainer
    from streams.join.pool import CandidatePool
    from streams.simulator.world import CONTENT_TYPES, World

    method, policy = arm
    world, store, pool = World(seed=seed, n_users=1000, n_items=10000), AsOfFeatures(), CandidatePool()
    clock = {"ms": 0}
    for i, t in enumerate(world.item_types):
        pool.add(world.item_id(i), CONTENT_TYPES[t])
    trainer = OnlineTrainer(seed=seed, **LEARNED[method]) if method in LEARNED else None
    ctr_column = ITEM_STAT_FEATURES.index(COUNTERS["ctr"])

    @torch.no_grad()
    def preranker(request_id, user_id, user_features, ids, types):  # noqa: ANN001, ANN202
        history = (user_features or {}).get("history") or ()
        items = featurize_items(ids, types, store.read(user_id, list(ids), clock["ms"], history))
        if trainer is None:  # the ctr counter
            return items.dense[:, ctr_column].astype(np.float64)
        users, it = user_tensors([featurize_user(user_id, user_features)]), item_tensors(items)
        group = torch.zeros(len(ids), dtype=torch.long)

        def expressive(rows: np.ndarray | None) -> np.ndarray:
            chosen = it if rows is None else {k: v[torch.as_tensor(rows)] for k, v in it.items()}
            return trainer.expressive(users, chosen, group[: len(chosen["item_idx"])]).numpy()

        return score_policy(policy, LOOP_KEEP, budget_count(len(ids), LOOP_BUDGET),
                            lambda: trainer.light(users, it, group).numpy(), expressive)[0]

    rewards, batch = [], []
    for i in range(requests):
        clock["ms"] = i * SYNTHETIC_GAP_MS
        request = world.request(i, candidates, None if method == "heuristic" else preranker)
        rewards.append(world.reward(request))
        batch.append(assemble_request(timed(request, clock["ms"]), store, pool))
        if len(batch) == 16:
            if trainer is not None:
                trainer.step(batch)
            batch = []
    half = rewards[len(rewards) // 2:]
    return {"method": method, "policy": policy, "budget": LOOP_BUDGET if policy == "damr" else None, "seed": seed,
            "closed_loop": True, "reward_per_request": float(np.mean(half)), "requests": requests,
            "rewards": [round(r, 5) for r in rewards]}


def add_bootstrap(rows: list[dict[str, Any]], source: str, seed: int, users: Any) -> None:
    """Give every whole-stream row of ``source`` and ``seed`` its paired bootstrap over users against
    each reference (``boot_vs_<method>``: difference, 2.5% and 97.5% points), then drop the
    per-request values it was computed from."""
    from deploy.evaluation.bootstrap import paired_bootstrap

    mine = [r for r in rows if r["source"] == source and r["seed"] == seed and "_per_request" in r]
    by_arm = {(r["method"], r["policy"], r["budget"]): r["_per_request"] for r in mine}
    for r in mine:
        weight, auc = r["_per_request"]
        for ref in REFERENCES:
            if ref in by_arm and len(auc) == len(users):
                r[f"boot_vs_{ref[0]}"] = list(paired_bootstrap(users, weight, auc, by_arm[ref][1], seed=seed))
    for r in mine:
        del r["_per_request"]


def run(args: argparse.Namespace) -> int:
    import torch

    from deploy.evaluation.bootstrap import qualifying_users
    from deploy.evaluation.report import write_report
    from deploy.progress import Progress

    torch.set_num_threads(1)  # micro-batches of a few thousand rows: a second thread only adds contention

    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise SystemExit(f"hap eval: unknown method(s) {', '.join(unknown)}; known: {', '.join(ALL_METHODS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    sources = ["synthetic"] + (["replay"] if args.dataset else [])
    rows, conflict = [], {}
    jobs = [(s, seed, m) for s in sources for seed in range(args.seeds) for m in methods]
    with Progress(len(jobs) + len(LOOP_ARMS) * args.seeds, "eval", "run") as bar:
        cache: dict[tuple[str, int], tuple[list[Any], list[dict[str, Any]]]] = {}
        for source, seed, method in jobs:
            if (source, seed) not in cache:
                n = args.replay_groups if source == "replay" else args.groups
                cache = {(source, seed): offline_groups(source, seed, n, args.dataset, args.candidates)}
            groups, bodies = cache[(source, seed)]
            if method in COUNTERS:
                out = run_counter(groups, method, seed, args.blocks)
            elif method in (ONLINE_COUNTERS, GBDT):
                out = run_feature_arm(method, groups, seed, args.blocks)
            else:
                out, cosines = run_learned(groups, bodies, method, seed, args.blocks)
                conflict[f"{source}/{method}/{seed}"] = cosines
            rows += [{"source": source, **r} for r in out]
            bar.update(f"{source} seed {seed} {method}")
            if method == methods[-1]:
                add_bootstrap(rows, source, seed, qualifying_users(groups))
        for seed in range(args.seeds):
            for arm in LOOP_ARMS:
                rows.append({"source": "synthetic", **run_closed_loop(arm, seed, args.loop_requests, args.candidates)})
                bar.update(f"closed loop seed {seed} {'/'.join(arm)}")
    command = " ".join(_argv(args))
    (args.out / "results.json").write_text(json.dumps({"rows": rows, "conflict": conflict, "command": command},
                                                      indent=1))
    write_report(args.out, rows, conflict, args.markdown, command)
    print(f"wrote {args.out / 'results.json'} ({len(rows)} rows)")
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    out = ["hap", "eval", "--out", str(args.out), "--seeds", str(args.seeds), "--blocks", str(args.blocks),
           "--groups", str(args.groups), "--loop-requests", str(args.loop_requests), "--candidates",
           str(args.candidates), "--methods", args.methods]
    if args.dataset:
        out += ["--dataset", str(args.dataset), "--replay-groups", str(args.replay_groups)]
    if args.markdown:
        out += ["--markdown", str(args.markdown)]
    return out
