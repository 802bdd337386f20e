"""Producer SDK throughput against kafka-python's plain producer on the same payloads.

    python bench/produce.py [--events 20000] [--compression gzip]   # needs a broker: `hap stack up`
                                                                     # (or HAP_KAFKA_BOOTSTRAP)

The SDK validates every event with the worker's decoders before sending it; the plain producer
sends the same encoded payloads, uncompressed, unchecked. ``--compression`` sets the SDK's codec
(default: the SDK's own, none). Both producers are connected and their topics known before
timing; ``--rounds`` alternating rounds per side (each: send every event, flush), medians reported.
The payloads (some 200,000 objects) are frozen out of the cycle collector before timing: its full
collections, 0.3-0.5 s each here, otherwise land on whichever side happens to be running.
Ends with one JSON line {"sdk_events_per_s", "raw_events_per_s", "ratio", "sdk_mb_per_s",
"raw_mb_per_s", "events", "rounds", "ratio_per_round", "compression"}.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
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


def _round(send: Callable[[object], object], flush: Callable[[], object], events: list) -> float:
    """Seconds to send ``events`` and have every one acknowledged."""
    t0 = time.perf_counter()
    for e in events:
        send(e)
    flush()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per side; the medians are reported")
    parser.add_argument("--compression", choices=["gzip", "lz4", "zstd", "snappy"],
                        help="the SDK's codec (default: the SDK's default, none)")
    args = parser.parse_args()
    bootstrap = Settings.load().kafka_bootstrap
    events = payloads(args.events)
    size = sum(len(encode(e)) for e in events)

    prefix = f"benchp{uuid.uuid4().hex[:6]}."
    codec = {"compression": args.compression} if args.compression else {}
    sdk = EventProducer(bootstrap, topic_prefix=prefix, **codec)
    raw = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=256 * 1024)

    def sdk_send(e: object) -> None:
        (sdk.send_ranking if hasattr(e, "candidates") else sdk.send_exposure)(e)

    def raw_send(e: object) -> None:
        topic = f"{prefix}raw.{'ranking' if hasattr(e, 'candidates') else 'exposure'}"
        raw.send(topic, key=e.request_id.encode(), value=encode(e))

    kinds = [next(e for e in events if hasattr(e, "candidates")),
             next(e for e in events if not hasattr(e, "candidates"))]
    _round(sdk_send, sdk.flush, kinds)  # topics created and their metadata known before any timing
    _round(raw_send, raw.flush, kinds)
    gc.collect()
    gc.freeze()  # the payloads and both clients: no full collection walks them during a round
    sdk_s, raw_s = [], []
    for _ in range(args.rounds):  # alternating, so that a busy moment of the machine hits both sides
        sdk_s.append(_round(sdk_send, sdk.flush, events))
        raw_s.append(_round(raw_send, raw.flush, events))
    sdk.close()
    raw.close()
    sdk_m, raw_m = statistics.median(sdk_s), statistics.median(raw_s)
    print(json.dumps({
        "sdk_events_per_s": round(len(events) / sdk_m, 1), "raw_events_per_s": round(len(events) / raw_m, 1),
        "ratio": round(raw_m / sdk_m, 3), "sdk_mb_per_s": round(size / sdk_m / 1e6, 2),
        "raw_mb_per_s": round(size / raw_m / 1e6, 2), "events": len(events), "rounds": args.rounds,
        "ratio_per_round": [round(r / s, 3) for s, r in zip(sdk_s, raw_s, strict=True)],
        "compression": sdk.compression,
    }))


if __name__ == "__main__":
    main()
