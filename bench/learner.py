"""Online learner throughput against a tight in-memory loop, and publish cost with and without deltas.

The same simulated groups are trained (a) by the online service, consuming them from Kafka
with de-duplication and checkpointing, and (b) by the trainer alone in a tight loop; both in
this process. Publishing is timed into Redis for full versions and for deltas.

    python bench/learner.py [--groups 400]     # needs a stack: `hap stack up` (or HAP_* endpoints)

Ends with one JSON line {"online_samples_per_s", "tight_samples_per_s", "ratio", "publish_ms_p50",
"delta_bytes", "full_bytes", ...}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from kafka import KafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "learner"))

from groups import simulated_groups  # noqa: E402

from deploy.settings import Settings  # noqa: E402
from feature_store.model_store import ModelStore, TierForm  # noqa: E402
from learner.batching import Batch  # noqa: E402
from learner.service import LearnerConfig, LearnerService  # noqa: E402
from learner.trainer import OnlineTrainer  # noqa: E402
from streams.schemas import encode  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402

BATCH = 32


def tight(groups, method: str) -> float:
    trainer = OnlineTrainer(method=method, seed=0)
    t0 = time.perf_counter()
    for i in range(0, len(groups), BATCH):
        trainer.step(groups[i:i + BATCH])
    return trainer.samples_seen / (time.perf_counter() - t0)


def tier_only(groups, tier: str) -> float:
    trainer = OnlineTrainer(method="mixed", seed=0)
    model = trainer.tiers()[tier]
    opts = [o for o in trainer.optimizers if any(p is q for g in o.param_groups for p in g["params"]
                                                  for q in model.parameters())]
    batches = [Batch.from_groups(groups[i:i + BATCH]) for i in range(0, len(groups), BATCH)]
    t0 = time.perf_counter()
    for b in batches:
        loss = F.binary_cross_entropy_with_logits(model(b.users, b.items, b.group), b.label)
        loss.backward()
        for o in opts:
            o.step()
            o.zero_grad()
    return sum(len(b.label) for b in batches) / (time.perf_counter() - t0)


def online(groups, settings: Settings) -> float:
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    ensure_topics(settings.kafka_bootstrap, prefix)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=20)
    for g in groups:
        producer.send(f"{prefix}samples", key=g.request_id.encode(), value=encode(g))
    producer.close()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = LearnerConfig(settings.kafka_bootstrap, settings.redis, f"{prefix}samples",
                            Path(tmp) / "ckpt.safetensors", batch_groups=BATCH, checkpoint_s=10.0,
                            model_prefix=f"{prefix}:")
        service = LearnerService(cfg, OnlineTrainer(seed=0))
        t0 = time.perf_counter()
        service.run(max_idle_s=1.0)
        elapsed = time.perf_counter() - t0 - 1.0  # less the idle second that ends the run
    return service.trainer.samples_seen / elapsed


def publish_costs(groups, settings: Settings) -> dict[str, float]:
    store = ModelStore(settings.redis.client(), prefix=f"bench{uuid.uuid4().hex[:6]}:")
    trainer = OnlineTrainer(seed=0)
    full_ms, delta_ms, full_bytes, delta_bytes = [], [], [], []
    for i in range(0, min(len(groups), 10 * BATCH), BATCH):
        trainer.step(groups[i:i + BATCH])
        touched = trainer.take_touched()
        for delta in (False, True):
            tiers = {n: TierForm(*t.export(), touched[n] if delta else None) for n, t in trainer.tiers().items()}
            t0 = time.perf_counter()
            store.publish(tiers, trained_until_event_ts_ms=0, trained_until_finalized_ts_ms=0, samples_seen=0)
            (delta_ms if delta else full_ms).append((time.perf_counter() - t0) * 1000)
            (delta_bytes if delta else full_bytes).append(store.last_publish_bytes)
    return {"publish_ms_p50": round(float(np.median(delta_ms)), 2),
            "publish_full_ms_p50": round(float(np.median(full_ms)), 2),
            "delta_bytes": int(np.median(delta_bytes)), "full_bytes": int(np.median(full_bytes))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = Settings.load()
    groups = simulated_groups(args.groups, seed=11)
    figures = {f"tight_{m}_samples_per_s": round(tight(groups, m), 1) for m in ("ghcl", "mixed")}
    figures.update({f"tight_{t}_only_samples_per_s": round(tier_only(groups, t), 1) for t in ("light", "expressive")})
    online_rate = online(groups, settings)
    figures.update({"online_samples_per_s": round(online_rate, 1),
                    "tight_samples_per_s": figures["tight_ghcl_samples_per_s"],
                    "ratio": round(online_rate / figures["tight_ghcl_samples_per_s"], 3)})
    figures.update(publish_costs(groups, settings))
    figures["delta_over_full_bytes"] = round(figures["delta_bytes"] / figures["full_bytes"], 4)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
