"""What the join keeps of each finalized request, field by field, in bytes as its tables store them.

Requests of the simulator (``hap simulate --out``) go through the real join (:class:`streams.join.joiner.Joiner`
on in-memory tables, the real :class:`streams.join.features.StreamFeatures` on a Redis of its own), in event
time, until every window closed; then each finalized request's ``finalized`` entry (late-event detection,
duplicates, corrections) and ``emitted`` entry (the group a correction relabels) are serialized as the
worker's changelogs and RocksDB store hold them, and measured per field: the mean bytes per retained request.

    python bench/retained.py [--requests 2000]

Ends with one JSON line: {"requests", "finalized": {field: bytes}, "finalized_entry", "emitted_group":
{part: bytes}, "emitted_group_json", "emitted_group_kept", "emitted_per_request", "total_per_request"}.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import orjson
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.stack.process import free_port  # noqa: E402
from feature_store.connection import RedisEndpoint  # noqa: E402
from streams.contract.schemas import decode_sample_group, encode  # noqa: E402
from streams.join.features import StreamFeatures  # noqa: E402
from streams.join.joiner import JoinConfig, Joiner, JoinTables, pack_group, unpack_group  # noqa: E402
from streams.join.pool import CandidatePool  # noqa: E402

Rec = collections.namedtuple("Rec", "topic partition offset key value headers")


def events(directory: Path) -> list[Rec]:
    """The ranking and exposure records of a simulator's output, in event time."""
    out = []
    for topic in ("ranking", "exposure"):
        for offset, line in enumerate((directory / f"{topic}.jsonl").read_bytes().splitlines()):
            event = orjson.loads(line)
            out.append((event["ts_ms"], Rec(f"hap.{topic}", 0, offset, event["request_id"].encode(), line, ())))
    out.sort(key=lambda pair: pair[0])
    return [rec for _, rec in out]


async def join(records: list[Rec], redis_url: str, items: Path) -> JoinTables:
    """Every request of ``records`` through the join, its window closed; the tables it left."""
    tables, now = JoinTables.in_memory(), [0]
    features = StreamFeatures(RedisEndpoint(redis_url).client(), prefix="retained:")
    joiner = Joiner(JoinConfig(), tables, lambda kind, key, value: None, features, CandidatePool(),
                    clock=lambda: now[0])
    for line in items.read_bytes().splitlines():
        joiner.catalogue(Rec("hap.items", 0, 0, None, line, ()))
    tick = Rec("hap.streams-ticks", 0, 0, b"tick", b"", ())
    for start in range(0, len(records), 1000):
        batch = records[start:start + 1000]
        now[0] = orjson.loads(batch[-1].value)["ts_ms"]
        await joiner.process([*batch, tick])
        await features.write_counts()
    now[0] += 60_000  # every window closes by wall time, none is past the retention
    await joiner.process([tick])
    return tables


def field_bytes(tables: JoinTables) -> dict[str, Any]:
    """Mean bytes per finalized request of each field of its ``finalized`` entry and of its ``emitted`` group."""
    finalized = [done for _, done in tables.finalized.items()]
    per_field: collections.Counter[str] = collections.Counter()
    for done in finalized:
        for field, value in done.items():
            per_field[field] += len(orjson.dumps({field: value})) - 2  # its share of the entry's JSON object
    kept = [value for _, value in tables.emitted.items()]
    emitted = [unpack_group(value) for value in kept]
    parts: collections.Counter[str] = collections.Counter()
    rng = random.Random(0)
    for value in emitted:
        group = decode_sample_group(value)
        features = sum(len(orjson.dumps(item.features)) for item in group.items)
        user = len(orjson.dumps(group.user_features))
        parts["item features"] += features
        parts["user_features"] += user
        parts["items' ids, sources, labels, positions"] += len(value) - features - user
        # the bound for real statistics: every feature a random double (its JSON: 17-19 digits, not a short 0.0)
        noisy = msgspec.structs.replace(group, items=[msgspec.structs.replace(
            item, features={name: rng.random() for name in item.features}) for item in group.items])
        parts["kept, features random doubles"] += len(pack_group(encode(noisy)))
        packed = msgspec.msgpack.encode(group)
        parts["as msgpack"] += len(packed)
        parts["as msgpack, zstd level 3"] += len(zstandard.ZstdCompressor(level=3).compress(packed))
    n, m = max(1, len(finalized)), max(1, len(emitted))
    return {"requests": len(finalized), "groups_kept": len(kept),
            "finalized": {field: round(total / n, 1) for field, total in per_field.most_common()},
            "finalized_entry": round(sum(len(orjson.dumps(d)) for d in finalized) / n, 1),
            "emitted_group": {part: round(total / m, 1) for part, total in parts.items()},
            "emitted_group_json": round(sum(map(len, emitted)) / m, 1),
            "emitted_group_kept": round(sum(map(len, kept)) / m, 1),
            # per finalized request: a request without a group kept costs none
            "emitted_per_request": round(sum(map(len, kept)) / n, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--events", type=Path, help="a `hap simulate --out` directory (default: simulate here)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.events or Path(tmp) / "events"
        if args.events is None:
            subprocess.run([sys.executable, "-m", "deploy.cli", "simulate", "--requests", str(args.requests),
                            "--rate", "0", "--out", str(directory), "--no-progress"], check=True,
                           stdout=subprocess.DEVNULL)
        port = free_port()
        server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                                  stdout=subprocess.DEVNULL, cwd=tmp)
        try:
            time.sleep(0.5)
            tables = asyncio.run(join(events(directory), f"redis://127.0.0.1:{port}/0", directory / "items.jsonl"))
        finally:
            server.terminate()
            server.wait()
    report = field_bytes(tables)
    report["total_per_request"] = round(report["finalized_entry"] + report["emitted_per_request"], 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
