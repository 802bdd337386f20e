"""`hap eval`: seeded experiments of GHCL vs mixed and DAMR budgets, offline and in a closed loop.

Offline: sample groups are assembled by the real assembler (``streams.assembler``) from the
synthetic world or a MIND-layout replay, in time order, with item statistics counted as of
each request (cumulative counts stand in for the sliding windows), and trained on
progressively: every batch is scored before it is trained on, by the light tier, DAMR at
each budget and the expressive tier on everything.

Closed loop: the simulated cascade's pre-ranker is the arm's own model, trained online on the
groups its own exposures produce; arms see the same seeded traffic and are compared on the
ground-truth engagement of what users were shown (the analogue of HAP's usage-time A/B test).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

BUDGETS = (0.05, 0.1, 0.2, 0.3, 0.5)
COST_REQUESTS = 40  # the last requests of each run, re-scored on the router's path to time each policy
T95 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="seeded GHCL/DAMR experiments on the replay and the simulator")
    p.add_argument("--dataset", type=Path, help="a MIND-layout dataset to replay (default: synthetic only)")
    p.add_argument("--out", type=Path, default=Path("out/eval"))
    p.add_argument("--markdown", type=Path, help="also write the results page here (e.g. docs/results.md)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--groups", type=int, default=1200, help="synthetic groups per run")
    p.add_argument("--replay-groups", type=int, default=5000, help="replayed requests per run")
    p.add_argument("--loop-requests", type=int, default=600, help="closed-loop requests per arm and seed")
    p.add_argument("--candidates", type=int, default=400)


@dataclasses.dataclass
class CumulativeStats:
    """Per-item exposure and click counts, read as of a request before its own events count."""

    exp: dict[str, float] = dataclasses.field(default_factory=lambda: defaultdict(float))
    clk: dict[str, float] = dataclasses.field(default_factory=lambda: defaultdict(float))

    def read(self, ids: list[str], _at_ms: int) -> list[dict[str, float]]:
        from feature_store.item_stats import PRIOR_CTR, PRIOR_EXPOSURES

        return [{"exp_1d": self.exp[i], "clk_1d": self.clk[i], "pos_1d": self.clk[i],
                 "ctr_1d": (self.clk[i] + PRIOR_EXPOSURES * PRIOR_CTR) / (self.exp[i] + PRIOR_EXPOSURES)} for i in ids]

    def record(self, exposed: dict[str, int]) -> None:
        for item, label in exposed.items():
            self.exp[item] += 1
            self.clk[item] += label


def assemble_request(request: Any, stats: CumulativeStats, pool: Any) -> Any:
    """The group the streams would emit for ``request``; its exposures count from then on."""
    from streams.simulator.offline import group_of

    group = group_of(request, pool, stats.read)
    stats.record(request.exposed)
    return group


def serving_body(request: Any, stats: CumulativeStats, k: int = 10) -> dict[str, Any]:
    """The router request of ``request``'s whole candidate list, its statistics inline as of then."""
    r = request.ranking
    feats = stats.read([c.item_id for c in r.candidates], r.ts_ms)
    return {"request_id": r.request_id, "user_id": r.user_id, "user_features": r.user_features, "k": k,
            "candidates": [{"item_id": c.item_id, "content_type": c.content_type, "features": f}
                           for c, f in zip(r.candidates, feats, strict=True)]}


def offline_groups(source: str, seed: int, n: int, dataset: Path | None,
                   candidates: int) -> tuple[list[Any], list[dict[str, Any]]]:
    """The run's sample groups, in time order, and router requests of its last requests."""
    from streams.pool import CandidatePool
    from streams.simulator.replay import MindReplay
    from streams.simulator.world import CONTENT_TYPES, World

    pool, stats = CandidatePool(), CumulativeStats()
    if source == "replay":
        replay = MindReplay(dataset, seed=seed, n_candidates=candidates)
        for item in replay.pool:
            pool.add(str(item), replay.content_type(str(item)))
        requests = (r for r, _ in zip(replay.requests(), range(n), strict=False))
    else:
        world = World(seed=seed, n_users=1000, n_items=10000)
        for i, t in enumerate(world.item_types):
            pool.add(world.item_id(i), CONTENT_TYPES[t])
        requests = (world.request(i, candidates) for i in range(n))
    groups, bodies = [], []
    for i, r in enumerate(requests):
        if i >= n - COST_REQUESTS:
            bodies.append(serving_body(r, stats))
        groups.append(assemble_request(r, stats, pool))
    return groups, bodies


def serving_cost(tiers: dict[str, Any], bodies: list[dict[str, Any]]) -> dict[str, float]:
    """CPU ms per request of each policy on the router's scoring path (numpy, no HTTP)."""
    import redis

    from feature_store.model_store import LoadedVersion
    from router.features import FeatureCache
    from router.holder import build
    from router.prerank import parse_request, score

    model = build(LoadedVersion(1, tiers, {"version": 1}))
    features = FeatureCache(redis.Redis(port=1))  # every feature is inline: Redis is never asked
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


def run_offline(groups: list[Any], bodies: list[dict[str, Any]], method: str,
                seed: int) -> tuple[list[dict[str, Any]], list[float]]:
    from learner.trainer import OnlineTrainer

    trainer = OnlineTrainer(method=method, seed=seed, extra_budgets=BUDGETS, measure_conflict=True)
    cosines, started = [], time.process_time()
    for i in range(0, len(groups), 32):
        report = trainer.step(groups[i:i + 32])
        cosines.append(report.grad_cosine if report.grad_cosine is not None else float("nan"))
    cpu_ms = (time.process_time() - started) * 1000 / len(groups)
    cost = serving_cost({n: t.export() for n, t in trainer.tiers().items()}, bodies)
    rows = []
    for name, m in trainer.metrics.items():
        if name == "damr":
            continue
        r = m.report()
        budget = float(name.split("@")[1]) if "@" in name else (1.0 if name == "expressive_all" else 0.0)
        evals = trainer.expressive_evals.get(name, 0) / len(groups) if "@" in name else (
            float(np.mean([len(g.items) for g in groups])) if name == "expressive_all" else 0.0)
        rows.append({"method": method, "policy": name.split("@")[0], "budget": budget, "seed": seed,
                     "auc": r["auc"], "gauc": r["gauc"], "recall_at_k": r["recall_at_k"],
                     "consistency_at_k": r["consistency_at_k"], "auc_vs": r["auc_vs"],
                     "expressive_evals_per_request": round(evals, 2),
                     "serve_cpu_ms_per_request": round(cost[name], 3),
                     "train_cpu_ms_per_request": round(cpu_ms, 3)})
    return rows, cosines


def run_closed_loop(arm: str, seed: int, requests: int, candidates: int) -> dict[str, Any]:
    """Engagement of the exposures chosen through ``arm``'s own online-trained pre-ranker."""
    import torch

    from feature_store.featurize import featurize_items, featurize_user
    from learner.models import item_tensors, user_tensors
    from learner.trainer import OnlineTrainer
    from router.damr import budget_count, merge, route
    from streams.pool import CandidatePool
    from streams.simulator.world import CONTENT_TYPES, World

    method, policy = arm.split("/")
    world, stats, pool = World(seed=seed, n_users=1000, n_items=10000), CumulativeStats(), CandidatePool()
    for i, t in enumerate(world.item_types):
        pool.add(world.item_id(i), CONTENT_TYPES[t])
    trainer = OnlineTrainer(method="ghcl" if method == "heuristic" else method, seed=seed)

    @torch.no_grad()
    def preranker(request_id, user_id, user_features, ids, types):  # noqa: ANN001, ANN202
        items = featurize_items(ids, types, stats.read(list(ids), 0))
        users, it = user_tensors([featurize_user(user_id, user_features)]), item_tensors(items)
        group = torch.zeros(len(ids), dtype=torch.long)
        if policy == "expressive_all":
            return trainer.expressive(users, it, group).numpy()
        light = trainer.light(users, it, group).numpy()
        if policy == "damr":
            hard = route(light, 200, budget_count(len(ids), 0.2))
            routed = {k: v[torch.as_tensor(hard)] for k, v in it.items()}
            return merge(light, hard, trainer.expressive(users, routed, group[: len(hard)]).numpy())
        return light

    rewards, batch = [], []
    for i in range(requests):
        request = world.request(i, candidates, None if method == "heuristic" else preranker)
        rewards.append(world.reward(request))
        batch.append(assemble_request(request, stats, pool))
        if len(batch) == 16:
            if method != "heuristic":
                trainer.step(batch)
            batch = []
    half = rewards[len(rewards) // 2:]
    return {"method": method, "policy": policy, "budget": 0.2 if policy == "damr" else None, "seed": seed,
            "closed_loop": True, "reward_per_request": float(np.mean(half)), "requests": requests}


def ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of a 95% t-interval over seeds."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if len(values) < 2:
        return (values[0] if values else float("nan")), float("nan")
    return float(np.mean(values)), T95.get(len(values), 1.96) * float(np.std(values, ddof=1)) / math.sqrt(len(values))


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from deploy.eval_report import write_report

    args.out.mkdir(parents=True, exist_ok=True)
    sources = ["synthetic"] + (["replay"] if args.dataset else [])
    rows, conflict = [], {}
    jobs = [(s, seed, m) for s in sources for seed in range(args.seeds) for m in ("mixed", "ghcl")]
    arms = ["heuristic/none", "mixed/light", "ghcl/light", "ghcl/damr", "ghcl/expressive_all"]
    with tqdm(total=len(jobs) + len(arms) * args.seeds, desc="eval", unit="run") as bar:
        cache: dict[tuple[str, int], tuple[list[Any], list[dict[str, Any]]]] = {}
        for source, seed, method in jobs:
            if (source, seed) not in cache:
                n = args.replay_groups if source == "replay" else args.groups
                cache = {(source, seed): offline_groups(source, seed, n, args.dataset, args.candidates)}
            out, cosines = run_offline(*cache[(source, seed)], method, seed)
            rows += [{"source": source, **r} for r in out]
            conflict[f"{source}/{method}/{seed}"] = cosines
            bar.update()
        for seed in range(args.seeds):
            for arm in arms:
                rows.append({"source": "synthetic", **run_closed_loop(arm, seed, args.loop_requests, args.candidates)})
                bar.update()
    (args.out / "results.json").write_text(json.dumps({"rows": rows, "conflict": conflict,
                                                      "command": " ".join(_argv(args))}, indent=1))
    write_report(args.out, rows, conflict, args.markdown, " ".join(_argv(args)))
    print(f"wrote {args.out / 'results.json'} ({len(rows)} rows)")
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    out = ["hap", "eval", "--out", str(args.out), "--seeds", str(args.seeds), "--groups", str(args.groups),
           "--loop-requests", str(args.loop_requests), "--candidates", str(args.candidates)]
    if args.dataset:
        out += ["--dataset", str(args.dataset), "--replay-groups", str(args.replay_groups)]
    if args.markdown:
        out += ["--markdown", str(args.markdown)]
    return out
