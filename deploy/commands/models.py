"""`hap models list|rollback VERSION`: the kept model versions in Redis."""

from __future__ import annotations

import argparse
import json
import time


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models")
    p.add_argument("action", choices=["list", "rollback"], help="list: the kept versions, newest first; rollback: "
                   "serve VERSION (see docs/operations.md)")
    p.add_argument("version", nargs="?", type=int, help="rollback: the version to serve")
    p.add_argument("--json", action="store_true", help="list: one JSON array")


def run(args: argparse.Namespace) -> int:
    from deploy.settings import Settings
    from feature_store.model_store import ModelStore, ModelStoreError

    s = Settings.load()
    store = ModelStore(s.redis.client(), prefix=s.redis_prefix)
    try:
        if args.action == "rollback":
            if args.version is None:
                raise ModelStoreError("rollback needs a VERSION (see `hap models list`)")
            print(f"serving version {store.rollback(args.version)['version']}")
            return 0
        versions = store.versions()
    except ModelStoreError as exc:
        print(f"hap models: {exc}")
        return 1
    if args.json:
        print(json.dumps([{k: v for k, v in e.items() if k != "metrics"} for e in versions]))
        return 0
    now = time.time() * 1000
    for n, e in enumerate(versions):
        age = (now - e["published_ts_ms"]) / 1000
        kinds = "/".join(t["kind"] for t in e["tiers"].values())
        print(f"{'*' if n == 0 else ' '} v{e['version']:<6} published {age:8.1f}s ago  samples {e['samples_seen']:<9} "
              f"{kinds:12} {e['bytes'] / 1e6:.2f} MB")
    return 0
