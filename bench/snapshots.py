"""The Redis memory the kept snapshots cost: a simulated day of the learner's publishes.

A private Redis (no stack needed); versions of the learner's real tier sizes (``OnlineTrainer()``,
dim 16, 2^17 id buckets, ``--touched`` embedding rows changed per table each version) published
every ``--publish-every-min`` minutes of a simulated clock for ``--hours``, with the learner's
defaults (``--keep-versions`` 5, a snapshot every ``HAP_MODEL_SNAPSHOT_EVERY_MIN`` kept
``HAP_MODEL_SNAPSHOT_KEEP_H``), into a Redis with the local stack's ``maxmemory`` (a history that
does not fit fails the run). At the end it measures, with ``MEMORY USAGE``, the blobs of each kept
snapshot and of the recent versions and the manifest, and the growth of Redis' ``used_memory`` once
the blobs no kept version references are gone; one JSON line:

    python bench/snapshots.py [--hours 25] [--every-min 120] [--keep-h 24]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.settings import Settings  # noqa: E402
from deploy.stack.process import free_port  # noqa: E402
from deploy.stack.services import Redis  # noqa: E402
from feature_store.model_store import ModelStore, TierForm  # noqa: E402
from learner.trainer import OnlineTrainer  # noqa: E402


def simulate(args: argparse.Namespace, client) -> dict:  # noqa: ANN001 - a redis.Redis
    now = [1.8e9]
    store = ModelStore(client, prefix="snap:", keep_versions=args.keep_versions, snapshot_every_s=args.every_min * 60,
                       snapshot_keep_s=args.keep_h * 3600, clock=lambda: now[0],
                       superseded_ttl_s=1)  # simulated hours pass in seconds: superseded blobs leave at once
    forms = {name: tier.export() for name, tier in OnlineTrainer().tiers().items()}
    rng = np.random.default_rng(0)
    baseline = int(client.info("memory")["used_memory"])
    publishes = int(args.hours * 60 / args.publish_every_min)
    for n in range(publishes):
        now[0] += args.publish_every_min * 60
        tiers = {name: TierForm(tensors, spec, {e: rng.choice(len(tensors[e]), args.touched, replace=False)
                                                for e in spec["embeddings"]})
                 for name, (tensors, spec) in forms.items()}
        store.publish(tiers, trained_until_event_ts_ms=0, trained_until_finalized_ts_ms=0, samples_seen=n)
    kept = store.versions()
    for raw in client.scan_iter(match=store.keys.blob_pattern, count=1000):
        if client.ttl(raw) > 0:  # superseded, in its grace TTL: gone a minute later
            client.delete(raw)

    def usage(entry: dict) -> int:
        return sum(client.memory_usage(key) or 0 for tier in entry["tiers"].values() for key in tier["chain"])

    snapshots = [e for e in kept[args.keep_versions:] if e.get("snapshot")]
    per_snapshot = [usage(e) for e in snapshots]
    referenced = {key for e in kept for tier in e["tiers"].values() for key in tier["chain"]}
    manifest = client.memory_usage(store.keys.manifest) or 0
    return {
        "publishes": publishes, "simulated_hours": args.hours, "every_min": args.every_min, "keep_h": args.keep_h,
        "keep_versions": args.keep_versions, "touched_rows": args.touched,
        "kept_versions": len(kept), "snapshots_beyond_recent": len(snapshots),
        "bytes_per_snapshot": int(np.mean(per_snapshot)) if per_snapshot else 0,
        "snapshots_bytes": sum(per_snapshot),
        "referenced_blobs": len(referenced),
        "referenced_blob_bytes": sum(client.memory_usage(k) or 0 for k in referenced),
        "manifest_bytes": manifest,
        "used_memory_growth_bytes": int(client.info("memory")["used_memory"]) - baseline,
    }


def main() -> None:
    defaults = Settings.load({})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=defaults.model_snapshot_keep_h + 1)
    parser.add_argument("--every-min", type=float, default=defaults.model_snapshot_every_min)
    parser.add_argument("--keep-h", type=float, default=defaults.model_snapshot_keep_h)
    parser.add_argument("--keep-versions", type=int, default=5)
    parser.add_argument("--publish-every-min", type=float, default=5.0,
                        help="simulated minutes between versions (the learner: every second; only snapshots and "
                             "the last versions stay, so this sets the run's length, not the result)")
    parser.add_argument("--touched", type=int, default=3000, help="rows changed per table a version")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = Redis(Settings.load({"HAP_DATA_DIR": tmp, "HAP_REDIS_PORT": str(free_port())}))
        server.start()
        try:
            import redis

            print(json.dumps(simulate(args, redis.Redis.from_url(server.endpoint()))))
        finally:
            server.process.stop()


if __name__ == "__main__":
    main()
