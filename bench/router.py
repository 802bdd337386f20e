"""Router scoring cost and quality per policy at 1000, 2000 and 5000 candidates, on one core.

Trains both tiers briefly on simulated traffic, then scores fresh simulated requests in-process
(the request path minus HTTP) with each policy. Quality is recall@k against the ground-truth
top k of the simulated world, reported relative to ``expressive_all``. Also times the tiers'
forward passes in numpy (what the router runs) against torch on the same inputs, and the light
tier's scoring with cached item vectors against the same tier without its non-linear wide part.

    python bench/router.py [--requests 60] [--k 100] [--budget 0.2]

Ends with one JSON line: {"results": [{"policy", "candidates", "p50_ms", "p99_ms", "rps",
"expressive_evals", "recall_vs_expressive_all"}, ...], "numpy_vs_torch": {...}}.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import redis  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feature_store.model_store import LoadedVersion  # noqa: E402
from learner.models import item_tensors, user_tensors  # noqa: E402
from learner.trainer import OnlineTrainer  # noqa: E402
from router.features import FeatureCache  # noqa: E402
from router.holder import build  # noqa: E402
from router.prerank import parse_request, score  # noqa: E402
from router.serving import LightTier  # noqa: E402
from streams.join.pool import CandidatePool  # noqa: E402
from streams.simulator.offline import group_of  # noqa: E402
from streams.simulator.world import World  # noqa: E402


def stats_of(world: World, item: int) -> dict[str, float]:
    exposures = 100 * np.exp(world.popularity[item])
    return {"exp_1d": float(exposures), "clk_1d": float(exposures * 0.05 * np.exp(world.popularity[item] / 2))}


def train(world: World, groups: int) -> OnlineTrainer:
    trainer = OnlineTrainer(seed=0)
    pool = CandidatePool()
    for i in range(len(world.items)):
        pool.add(world.item_id(i), "video")
    batch = []
    for index in range(groups):
        request = world.request(index, n_candidates=500)
        batch.append(group_of(request, pool, lambda ids, at: [stats_of(world, int(i[1:])) for i in ids]))
        if len(batch) == 16:
            trainer.step(batch)
            batch = []
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--budget", type=float, default=0.2)
    parser.add_argument("--train-groups", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(1)
    world = World(seed=3, n_users=500, n_items=20000)
    print(f"training both tiers on {args.train_groups} simulated groups ...", file=sys.stderr)
    trainer = train(world, args.train_groups)
    tiers = {name: tier.export() for name, tier in trainer.tiers().items()}
    model = build(LoadedVersion(1, tiers, {"version": 1}))
    # steady state: the router's local feature cache is warm (no Redis round trip on the hot path)
    features = FeatureCache(redis.Redis(port=1), prefix="", ttl_s=3600)  # filled by put: Redis is never asked
    features.put([world.item_id(i) for i in range(len(world.items))],
                 [stats_of(world, i) for i in range(len(world.items))])
    results = []
    for n in (1000, 2000, 5000):
        rng = np.random.default_rng(n)
        requests = []
        for r in range(args.requests):
            user = int(rng.integers(len(world.users)))
            items = rng.choice(len(world.items), n, replace=False)
            truth = set(items[np.argsort(-world.click_prob(user, items))[: args.k]].tolist())
            body = {"request_id": f"b{r}", "user_id": f"u{user}", "k": args.k, "user_features": {"history": []},
                    "candidates": [{"item_id": world.item_id(i), "content_type": "video"} for i in items]}
            requests.append((body, truth))
        recall = {}
        for policy in ("expressive_all", "damr", "light"):
            latencies, evals, hits = [], [], []
            for body, truth in requests:
                req = parse_request({**body, "policy": policy, "budget": args.budget}, max_candidates=5000)
                t0 = time.perf_counter()
                out = score(model, features, req)
                latencies.append((time.perf_counter() - t0) * 1000)
                evals.append(out["expressive_evals"])
                hits.append(len({int(i["item_id"][1:]) for i in out["items"]} & truth) / args.k)
            recall[policy] = float(np.mean(hits))
            results.append({
                "policy": policy, "candidates": n, "p50_ms": round(float(np.percentile(latencies, 50)), 3),
                "p99_ms": round(float(np.percentile(latencies, 99)), 3),
                "rps": round(1000 / float(np.mean(latencies)), 1), "expressive_evals": float(np.mean(evals)),
                "recall_at_k": round(recall[policy], 4),
                "recall_vs_expressive_all": round(recall[policy] / max(recall["expressive_all"], 1e-9), 4),
            })
            print(json.dumps(results[-1]), file=sys.stderr)
    print(json.dumps({"results": results, "numpy_vs_torch": forward_timing(trainer, world)}))


def forward_timing(trainer: OnlineTrainer, world: World, n: int = 2000, reps: int = 200) -> dict[str, float]:
    """Per-call ms of each tier's forward pass on n candidates: numpy (served) and torch."""
    from feature_store.featurize import featurize_items, featurize_user

    items = featurize_items([world.item_id(i) for i in range(n)], ["video"] * n, [stats_of(world, i) for i in range(n)])
    user = featurize_user("u1", {"history": [world.item_id(i) for i in range(30)]})
    model = build(LoadedVersion(1, {k: t.export() for k, t in trainer.tiers().items()}, {"version": 1}))
    group = torch.zeros(n, dtype=torch.long)
    ut, it = user_tensors([user]), item_tensors(items)
    # the baseline: the same light tier without its non-linear wide part (what versions before it served)
    tensors, spec = trainer.light.export()
    linear = LightTier({k: v for k, v in tensors.items() if not k.startswith("dense_mlp.")},
                       {k: v for k, v in spec.items() if k != "dense_hidden"})
    user_vec, item_vecs = model.light.user_vector(user), model.light.item_vectors(items)
    linear_vecs = linear.item_vectors(items)
    timings = {
        "numpy_light_ms": lambda: model.light.score(model.light.user_vector(user), model.light.item_vectors(items),
                                                    items.dense),
        # the router's hot path: item vectors cached, the user vector and the scores per request
        "numpy_light_cached_items_ms": lambda: model.light.score(user_vec, item_vecs, items.dense),
        "numpy_light_linear_wide_cached_items_ms": lambda: linear.score(user_vec, linear_vecs, items.dense),
        "numpy_expressive_ms": lambda: model.expressive.score(user, items),
        "torch_light_ms": lambda: trainer.light(ut, it, group),
        "torch_expressive_ms": lambda: trainer.expressive(ut, it, group),
    }
    out = {}
    with torch.no_grad():
        for name, fn in timings.items():
            fn()
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            out[name] = round((time.perf_counter() - t0) * 1000 / reps, 3)
    out["light_nonlinear_over_linear_wide_cached"] = round(
        out["numpy_light_cached_items_ms"] / out["numpy_light_linear_wide_cached_items_ms"], 2)
    out["light_torch_over_numpy"] = round(out["torch_light_ms"] / out["numpy_light_ms"], 2)
    out["expressive_torch_over_numpy"] = round(out["torch_expressive_ms"] / out["numpy_expressive_ms"], 2)
    return out


if __name__ == "__main__":
    main()
