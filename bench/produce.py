"""Producer SDK throughput against kafka-python's plain producer on the same payloads.

    python bench/produce.py [--events 20000]     # needs a broker: `hap stack up` (or HAP_KAFKA_BOOTSTRAP)

Ends with one JSON line {"sdk_events_per_s", "raw_events_per_s", "ratio", "sdk_mb_per_s", "raw_mb_per_s", "events"}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import uuid
from pathlib import Path

from kafka import KafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.settings import Settings  # noqa: E402
from streams.contract.schemas import encode  # noqa: E402
from streams.kafka.producer import EventProducer  # noqa: E402
from streams.simulator.world import World  # noqa: E402


def payloads(n: int) -> list:
    world = World(seed=1, n_users=200, n_items=5000)
    events = []
    i = 0
    while len(events) < n:
        request = world.request(i, n_candidates=100)
        events.append(request.ranking)
        events += [dataclasses.replace(e, ts_ms=1) for _, e in request.events]
        i += 1
    return events[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    args = parser.parse_args()
    bootstrap = Settings.load().kafka_bootstrap
    events = payloads(args.events)
    size = sum(len(encode(e)) for e in events)

    prefix = f"benchp{uuid.uuid4().hex[:6]}."
    t0 = time.perf_counter()
    with EventProducer(bootstrap, topic_prefix=prefix) as sdk:
        for e in events:
            (sdk.send_ranking if hasattr(e, "candidates") else sdk.send_exposure)(e)
    sdk_s = time.perf_counter() - t0

    raw = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=256 * 1024)
    t0 = time.perf_counter()
    for e in events:
        topic = f"{prefix}raw.{'ranking' if hasattr(e, 'candidates') else 'exposure'}"
        raw.send(topic, key=e.request_id.encode(), value=encode(e))
    raw.flush()
    raw_s = time.perf_counter() - t0
    raw.close()
    print(json.dumps({
        "sdk_events_per_s": round(len(events) / sdk_s, 1), "raw_events_per_s": round(len(events) / raw_s, 1),
        "ratio": round(raw_s / sdk_s, 3), "sdk_mb_per_s": round(size / sdk_s / 1e6, 2),
        "raw_mb_per_s": round(size / raw_s / 1e6, 2), "events": len(events), "compression": sdk.compression,
    }))


if __name__ == "__main__":
    main()
