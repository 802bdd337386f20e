"""Online learner throughput against a tight in-memory loop and the tiers' own compute; publish cost.

The same simulated groups are trained (a) by the online service, consuming them from Kafka
with de-duplication and checkpointing, (b) by the trainer alone in a tight loop, from groups
already decoded and from their encoded bytes (decode + featurize + train), and (c) by each
tier's forward, backward and optimizer step alone on pre-built batches (the ceiling); all in
this process. Publishing is timed into Redis for full versions and for deltas.

    python bench/learner.py [--groups 400] [--device auto|cpu|cuda] [--batch-groups 32]
    python bench/learner.py --no-stack --device cuda    # (b) and (c) only: no Kafka or Redis needed
    python bench/learner.py --online-only               # (a) only, e.g. under py-spy
    python bench/learner.py --repeat 5                  # 5 online runs, each paired with a tight one
    python bench/learner.py --nproc 1,2 --groups 800    # `hap learner --nproc N` on a backlog, per N

Ends with one JSON line {"online_samples_per_s", "online_first_step_s", "tight_samples_per_s",
"nonlinear_over_linear_wide" (the tight GHCL loop against the same loop without the light tier's
non-linear wide part: the median of three alternated pairs), "ratio"
(online ÷ tight: the median of the paired runs' ratios, each in "ratios"), "decode_us_per_sample" (and the
field-by-field checks' "decode_checked_us_per_sample" on the same records),
"tight_from_bytes_samples_per_s", "tier_compute_samples_per_s", the ratios between them,
"publish_ms_p50", "delta_bytes", "full_bytes", ...}; with ``--nproc`` only {"ranks_samples_per_s": {N:
...}, "ranks_speedup": {N: samples/s over the first N's}}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "learner"))

from groups import simulated_groups  # noqa: E402

from deploy.settings import Settings  # noqa: E402
from learner.batching import Batch  # noqa: E402
from learner.trainer import OnlineTrainer, resolve_device  # noqa: E402
from streams.contract.schemas import check_sample_group, decode_sample_group, encode  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tight(groups, method: str, device: str, batch: int, **options) -> float:
    trainer = OnlineTrainer(method=method, seed=0, device=device, **options)
    trainer.step(groups[:batch])  # warm-up (kernels, allocator)
    seen = trainer.samples_seen
    t0 = time.perf_counter()
    for i in range(0, len(groups), batch):
        trainer.step(groups[i:i + batch])
    _sync(trainer.device)
    return (trainer.samples_seen - seen) / (time.perf_counter() - t0)


def tight_from_bytes(encoded: list[bytes], device: str, batch: int) -> float:
    """Encoded groups in memory -> decoded, featurized, trained (GHCL)."""
    trainer = OnlineTrainer(method="ghcl", seed=0, device=device)
    trainer.step([decode_sample_group(r) for r in encoded[:batch]])
    seen = trainer.samples_seen
    t0 = time.perf_counter()
    for i in range(0, len(encoded), batch):
        trainer.step([decode_sample_group(r) for r in encoded[i:i + batch]])
    _sync(trainer.device)
    return (trainer.samples_seen - seen) / (time.perf_counter() - t0)


def decode_costs(encoded: list[bytes]) -> dict[str, float]:
    """CPU µs per sample item to decode and validate a group: msgspec's typed structs (what the
    learner runs) against the contract's field-by-field checks (the fallback that explains a
    rejection), on the same records."""
    items = sum(len(decode_sample_group(r).items) for r in encoded)
    out = {}
    for name, fn in (("decode", decode_sample_group), ("decode_checked", check_sample_group)):
        t0 = time.process_time()
        for r in encoded:
            fn(r)
        out[f"{name}_us_per_sample"] = round((time.process_time() - t0) / items * 1e6, 3)
    out["decode_checked_over_decode"] = round(out["decode_checked_us_per_sample"] / out["decode_us_per_sample"], 1)
    return out


def tier_compute(groups, tier: str, device: str, batch: int) -> float:
    """Forward, backward and optimizer step of one tier alone, on batches already on the device."""
    trainer = OnlineTrainer(method="mixed", seed=0, device=device)
    model = trainer.tiers()[tier]
    opts = [o for o in trainer.optimizers if any(p is q for g in o.param_groups for p in g["params"]
                                                  for q in model.parameters())]
    batches = [Batch.from_groups(groups[i:i + batch]).to(trainer.device) for i in range(0, len(groups), batch)]
    _sync(trainer.device)
    t0 = time.perf_counter()
    for b in batches:
        loss = F.binary_cross_entropy_with_logits(model(b.users, b.items, b.group), b.label)
        loss.backward()
        for o in opts:
            o.step()
            o.zero_grad()
    _sync(trainer.device)
    return sum(len(b.label) for b in batches) / (time.perf_counter() - t0)


def backlog(groups, settings) -> tuple[str, int]:
    """``groups`` written to the samples topic under a fresh topic prefix; the prefix and their samples."""
    from kafka import KafkaProducer

    from streams.kafka.topics import ensure_topics

    prefix = f"bench{uuid.uuid4().hex[:6]}."
    ensure_topics(settings.kafka_bootstrap, prefix)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=20)
    for g in groups:
        producer.send(f"{prefix}samples", key=g.request_id.encode(), value=encode(g))
    producer.close()
    return prefix, sum(len(g.items) for g in groups)


def online(groups, settings, batch: int, device: str) -> tuple[float, float]:
    """Samples/s of the online service over a backlog: from its start until it trained the last
    sample (its stop, which waits for the final checkpoint and publish, is a shutdown cost: not
    counted); and the seconds from its start to its first step (connecting, the first fetch). Its
    trainer is warmed up by one step first, as :func:`tight`'s is."""
    from learner.service import LearnerConfig, LearnerService

    prefix, samples = backlog(groups, settings)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = LearnerConfig(settings.kafka_bootstrap, settings.redis, f"{prefix}samples",
                            Path(tmp) / "ckpt.safetensors", batch_groups=batch, checkpoint_s=10.0,
                            redis_prefix=f"{prefix}:")
        trainer = OnlineTrainer(seed=0, device=device)
        trainer.step(groups[:batch])  # warm-up (kernels, allocator), as in tight()
        target = trainer.samples_seen + samples
        trained_all, started, ended, step = threading.Event(), [], [], trainer.step

        def timed_step(batch):  # the end is the step that trains the last sample, not a polling thread's look
            started.append(time.perf_counter())
            report = step(batch)
            if trainer.samples_seen >= target and not trained_all.is_set():
                ended.append(time.perf_counter())
                trained_all.set()
            return report

        trainer.step = timed_step
        service = LearnerService(cfg, trainer)
        worker = threading.Thread(target=service.run, kwargs={"max_idle_s": 30.0})
        t0 = time.perf_counter()
        worker.start()
        while not trained_all.wait(1.0) and worker.is_alive():
            pass
        elapsed = (ended[0] if ended else time.perf_counter()) - t0
        service.stop()
        worker.join()
    _drop_keys(settings.redis.client(), f"{prefix}:")
    if service.trainer.samples_seen != target:
        trained = service.trainer.samples_seen - target + samples
        raise RuntimeError(f"the service trained {trained} of {samples} samples")
    return samples / elapsed, started[0] - t0


def ranks(groups, settings, batch: int, nproc: int, threads: int) -> float:
    """Samples/s of `hap learner --nproc N` (N processes, ``threads`` torch threads each) over a
    backlog in ``hap.samples`` (4 partitions): from its first step until its ranks trained the last
    sample, as their metrics say (scraped every 50 ms; the start-up, rendezvous and checkpoint load
    are not counted)."""
    from deploy.pipeline import Component
    from deploy.scrape import scrape
    from deploy.stack.process import free_port

    prefix, samples = backlog(groups, settings)
    port = free_port()
    urls = [f"http://127.0.0.1:{port + r}/metrics" for r in range(nproc)]  # rank r's metrics port

    def total(name: str) -> float:
        try:
            return sum(scrape(url).total(name) for url in urls)
        except OSError:
            return 0.0

    with tempfile.TemporaryDirectory() as tmp:
        env = {"HAP_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "HAP_REDIS_URL": settings.redis.url,
               "HAP_TOPIC_PREFIX": prefix, "HAP_REDIS_PREFIX": f"{prefix}:", "HAP_DATA_DIR": tmp,
               "HAP_LEARNER_METRICS_PORT": str(port)}
        learner = Component("learner", ["learner", "--nproc", str(nproc), "--threads", str(threads),
                                        "--batch-groups", str(batch), "--device", "cpu", "--exit-when-idle", "5"],
                            Path(tmp), env).start()
        try:
            while total("hap_learner_steps_total") < 1:
                if not learner.alive:
                    raise RuntimeError(f"hap learner --nproc {nproc} exited: {learner.log_tail()}")
                time.sleep(0.05)
            t0, first = time.perf_counter(), total("hap_learner_samples_total")
            while (trained := total("hap_learner_samples_total")) < samples:
                if not learner.alive:
                    raise RuntimeError(f"hap learner --nproc {nproc} trained {trained} of {samples} samples: "
                                       f"{learner.log_tail()}")
                time.sleep(0.05)
            elapsed = time.perf_counter() - t0
        finally:
            learner.stop()
    _drop_keys(settings.redis.client(), f"{prefix}:")
    return (samples - first) / elapsed


def _drop_keys(client, prefix: str) -> None:
    """Delete what a bench run published under ``prefix`` (full versions are tens of MB each)."""
    for key in client.scan_iter(match=f"*{prefix}*", count=1000):
        client.delete(key)


def publish_costs(groups, settings, batch: int) -> dict[str, float]:
    from feature_store.model_store import ModelStore, TierForm

    prefix = f"bench{uuid.uuid4().hex[:6]}:"
    store = ModelStore(settings.redis.client(), prefix=prefix)
    trainer = OnlineTrainer(seed=0)
    full_ms, delta_ms, full_bytes, delta_bytes = [], [], [], []
    for i in range(0, min(len(groups), 10 * batch), batch):
        trainer.step(groups[i:i + batch])
        touched = trainer.take_touched()
        for delta in (False, True):
            tiers = {n: TierForm(*t.export(), touched[n] if delta else None) for n, t in trainer.tiers().items()}
            t0 = time.perf_counter()
            store.publish(tiers, trained_until_event_ts_ms=0, trained_until_finalized_ts_ms=0, samples_seen=0)
            (delta_ms if delta else full_ms).append((time.perf_counter() - t0) * 1000)
            (delta_bytes if delta else full_bytes).append(store.last_publish_bytes)
    _drop_keys(settings.redis.client(), prefix)
    return {"publish_ms_p50": round(float(np.median(delta_ms)), 2),
            "publish_full_ms_p50": round(float(np.median(full_ms)), 2),
            "delta_bytes": int(np.median(delta_bytes)), "full_bytes": int(np.median(full_bytes))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=400)
    parser.add_argument("--batch-groups", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on the CPU")
    parser.add_argument("--no-stack", action="store_true", help="skip the figures that need Kafka and Redis")
    parser.add_argument("--online-only", action="store_true", help="only the online figure (to profile the service)")
    parser.add_argument("--nproc", type=lambda v: [int(n) for n in v.split(",")],
                        help="only the data-parallel figure: `hap learner --nproc N` on a backlog for each N of this "
                             "comma-separated list, --threads threads per rank (e.g. 1,2)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="online and tight GHCL runs, alternated, each pair giving one ratio (the median is "
                             "reported)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device, batch = str(resolve_device(args.device)), args.batch_groups
    groups = simulated_groups(args.groups, seed=11)
    figures: dict[str, object] = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
                                  "batch_groups": batch, "threads": args.threads}
    if args.nproc:
        rates = {n: ranks(groups, Settings.load(), batch, n, args.threads) for n in args.nproc}
        print(json.dumps({**figures, "ranks_samples_per_s": {n: round(r, 1) for n, r in rates.items()},
                          "ranks_speedup": {n: round(r / rates[args.nproc[0]], 3) for n, r in rates.items()}}))
        return
    if args.online_only:
        rate, first_step_s = online(groups, Settings.load(), batch, device)
        print(json.dumps({**figures, "online_samples_per_s": round(rate, 1),
                          "online_first_step_s": round(first_step_s, 3)}))
        return
    figures.update({f"tight_{m}_samples_per_s": round(tight(groups, m, device, batch), 1)
                    for m in ("ghcl", "mixed")})
    figures["tight_samples_per_s"] = figures["tight_ghcl_samples_per_s"]
    # the baseline of the light tier's non-linear wide part: the same tight loop without it, alternated
    # with the loop with it (three pairs, the median ratio), so that the machine's load hits both
    pairs = [(tight(groups, "ghcl", device, batch), tight(groups, "ghcl", device, batch, dense_hidden=0))
             for _ in range(3)]
    figures["tight_ghcl_linear_wide_samples_per_s"] = round(float(np.median([p[1] for p in pairs])), 1)
    figures["nonlinear_over_linear_wide"] = round(float(np.median([p[0] / p[1] for p in pairs])), 3)
    encoded = [encode(g) for g in groups]
    figures.update(decode_costs(encoded))
    figures["tight_from_bytes_samples_per_s"] = round(tight_from_bytes(encoded, device, batch), 1)
    light, expressive = (tier_compute(groups, t, device, batch) for t in ("light", "expressive"))
    both = 1 / (1 / light + 1 / expressive)  # a GHCL step trains both tiers on every sample
    figures.update({"tier_compute_light_samples_per_s": round(light, 1),
                    "tier_compute_expressive_samples_per_s": round(expressive, 1),
                    "tier_compute_samples_per_s": round(both, 1),
                    "tight_over_tier_compute": round(figures["tight_samples_per_s"] / both, 3),
                    "tight_from_bytes_over_tier_compute": round(figures["tight_from_bytes_samples_per_s"] / both, 3)})
    if not args.no_stack:
        settings = Settings.load()
        pairs = []  # (online, first step, tight) per repetition, alternated so that the machine's load hits both
        for n in range(args.repeat):
            tight_rate = figures["tight_ghcl_samples_per_s"] if n == 0 else tight(groups, "ghcl", device, batch)
            pairs.append((*online(groups, settings, batch, device), tight_rate))
            print(f"repetition {n + 1}/{args.repeat}: online {pairs[-1][0]:.0f}, tight {tight_rate:.0f} samples/s",
                  file=sys.stderr, flush=True)
        figures.update({"online_samples_per_s": round(float(np.median([p[0] for p in pairs])), 1),
                        "online_first_step_s": round(float(np.median([p[1] for p in pairs])), 3),
                        "ratios": [round(p[0] / p[2], 3) for p in pairs],
                        "ratio": round(float(np.median([p[0] / p[2] for p in pairs])), 3)})
        figures.update(publish_costs(groups, settings, batch))
        figures["delta_over_full_bytes"] = round(figures["delta_bytes"] / figures["full_bytes"], 4)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
