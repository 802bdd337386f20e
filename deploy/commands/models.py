"""`hap models list|rollback VERSION|pin VERSION|unpin`: the kept model versions in Redis.

``pin VERSION`` serves a kept version (the current one, an older one, an hourly snapshot) and
holds it: the learner publishes nothing that supersedes it (it trains and checkpoints on) until
``unpin``. See docs/operations.md, "Rolling back".
"""

from __future__ import annotations

import argparse
import json
import time


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models")
    p.add_argument("action", choices=["list", "rollback", "pin", "unpin"],
                   help="list: the kept versions, newest first (snapshots and the pin marked); rollback: serve VERSION "
                        "until the learner's next version; pin: serve VERSION and publish nothing that supersedes "
                        "it until unpin (see docs/operations.md, Rolling back)")
    p.add_argument("version", nargs="?", type=int, help="rollback, pin: a kept version (see `hap models list`)")
    p.add_argument("--reason", help="rollback, pin: recorded with it (default: the command's name)")
    p.add_argument("--json", action="store_true", help="list: one JSON array (pin and snapshots included)")


def run(args: argparse.Namespace) -> int:
    from deploy.settings import Settings
    from feature_store.model_store import ModelStore, ModelStoreError

    s = Settings.load()
    store = ModelStore(s.redis.client(), prefix=s.redis_prefix)
    try:
        if args.action in ("rollback", "pin"):
            if args.version is None:
                raise ModelStoreError(f"{args.action} needs a VERSION (see `hap models list`)")
            reason = args.reason or f"hap models {args.action}"
            if args.action == "rollback":
                print(f"serving version {store.rollback(args.version, reason)['version']}")
            else:
                print(f"serving version {store.pin(args.version, reason)['version']}, pinned: nothing supersedes it "
                      f"until `hap models unpin`")
            return 0
        if args.action == "unpin":
            pin = store.unpin()
            print("no version was pinned" if pin is None else
                  f"version {pin['version']} unpinned: the learner's next version supersedes it")
            return 0
        versions, pin = store.versions(), store.pinned()
    except ModelStoreError as exc:
        print(f"hap models: {exc}")
        return 1
    pinned = pin["version"] if pin else None
    if args.json:
        print(json.dumps([{**{k: v for k, v in e.items() if k != "metrics"}, "pinned": e["version"] == pinned}
                          for e in versions]))
        return 0
    now = time.time() * 1000
    for n, e in enumerate(versions):
        age = (now - e["published_ts_ms"]) / 1000
        kinds = "/".join(t["kind"] for t in e["tiers"].values())
        marks = " ".join(m for m, on in (("pinned", e["version"] == pinned), ("snapshot", e.get("snapshot"))) if on)
        print(f"{'*' if n == 0 else ' '} v{e['version']:<6} published {_age(age):>8} ago  samples "
              f"{e['samples_seen']:<9} {kinds:12} {e['bytes'] / 1e6:.2f} MB  {marks}".rstrip())
    return 0


def _age(seconds: float) -> str:
    """``seconds`` as the list shows it: seconds under two minutes, then minutes, then hours.

    >>> _age(12.34), _age(600), _age(7200)
    ('12.3s', '10.0m', '2.0h')
    """
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.1f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"
