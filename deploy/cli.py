"""The `hap` command: one entry point that wires the components together.

Each subcommand lives next to what it drives and exposes ``add_parser(subparsers)`` and
``run(args) -> int``; this module only collects them. Settings come from the environment
(``deploy.settings``, ``docs/settings.md``) and the endpoints of a stack started with the same data dir.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from deploy.settings import BROKERS_ENV, Settings
from deploy.stack import Stack, StackError

#: subcommand modules, imported on demand so that `hap stack` never loads torch
SUBCOMMANDS: dict[str, str] = {
    "simulate": "deploy.commands.simulate",
    "streams": "deploy.commands.streams",
    "learner": "deploy.commands.learner",
    "router": "deploy.commands.router",
    "models": "deploy.commands.models",
    "dlq": "deploy.commands.dlq",
    "demo": "deploy.demo",
    "replay": "deploy.replay",
    "eval": "deploy.evaluation.evaluate",
    "dashboards": "deploy.dashboards.cli",
}


def _stack_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stack", help="local Kafka (KRaft), Redis and Prometheus")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--json", action="store_true", help="machine-readable status")
    p.add_argument("--no-prometheus", action="store_true", help="start Kafka and Redis only")
    p.add_argument("--brokers", type=int, help=f"up: start a KRaft cluster of this many brokers (default: "
                   f"{BROKERS_ENV} or 1); topics are then replicated min(3, N) times, min ISR one fewer")
    p.set_defaults(func=run_stack)


def run_stack(args: argparse.Namespace) -> int:
    if args.brokers is not None and (args.action != "up" or args.brokers < 1):
        raise StackError("--brokers N (N >= 1) goes with `up`; `status` and `down` read it from the stack")
    settings = Settings.load(os.environ if args.brokers is None else {**os.environ, BROKERS_ENV: str(args.brokers)})
    stack = Stack(settings, with_prometheus=not args.no_prometheus)
    if args.action == "up":
        endpoints = stack.up()
        print(json.dumps(endpoints) if args.json else "\n".join(f"{k:18} {v}" for k, v in endpoints.items()))
        return 0
    if args.action == "down":
        stopped = stack.down()
        print("stopped: " + (", ".join(stopped) or "nothing was running"))
        return 0
    statuses = stack.status()
    if args.json:
        print(json.dumps({s.name: status_json(s.name, s.endpoint, s.healthy, s.managed, s.running)
                          for s in statuses}))
    else:
        for s in statuses:
            state = "healthy" if s.healthy else ("running, not answering" if s.running else "dead")
            print(f"{s.name:11} {state:24} {s.endpoint}{'' if s.managed else ' (external)'}")
    return 0 if all(s.healthy for s in statuses) else 1


#: the endpoint's key in `hap stack status --json` for each service (`.kafka.bootstrap`, `.redis.url`, ...)
ENDPOINT_KEYS = {"kafka": "bootstrap", "redis": "url", "prometheus": "url"}


def status_json(name: str, endpoint: str, healthy: bool, managed: bool, running: bool) -> dict[str, object]:
    """One service in `hap stack status --json`.

    The dotted key of earlier releases (``"kafka.bootstrap"`` inside ``kafka``) is kept for one
    release, deprecated; read ``.kafka.bootstrap``, ``.redis.url``, ``.prometheus.url``.

    >>> status_json("redis", "redis://127.0.0.1:6379/0", True, True, True)["url"]
    'redis://127.0.0.1:6379/0'
    """
    key = ENDPOINT_KEYS[name.split("-")[0]]  # kafka-1, kafka-2: the other nodes of a local cluster
    return {key: endpoint, "healthy": healthy, "managed": managed, "running": running,
            f"{name}.{key}": endpoint}  # deprecated: removed in the next release


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; ``only`` limits component imports to the subcommand being run (None: all)."""
    parser = argparse.ArgumentParser(prog="hap", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _stack_parser(sub)
    for name, module in SUBCOMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=f"(see `hap {name} --help`)")
            continue
        mod = importlib.import_module(module)
        mod.add_parser(sub)
        if sub.choices[name].get_default("func") is None:
            sub.choices[name].set_defaults(func=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    only = argv[0] if argv and argv[0] in SUBCOMMANDS else "stack"
    args = build_parser(only).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except StackError as exc:
        print(f"hap: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
