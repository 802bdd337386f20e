"""The `hap` command: one entry point that wires the components together.

Each subcommand lives next to what it drives and exposes ``add_parser(subparsers)`` and
``run(args) -> int``; this module only collects them, with each one's line in ``hap --help``
(:data:`SUMMARIES`). Settings come from the environment (``deploy.settings``, ``docs/settings.md``)
and the endpoints of a stack started with the same data dir; every command logs as
the settings ``log_level`` and ``log_format`` say (:mod:`deploy.logging_config`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import logging
import os
import sys
from typing import Any

from deploy.logging_config import LoggingSettingError, as_log_line, configure
from deploy.settings import BROKERS_ENV, Settings, env_name
from deploy.stack import Stack, StackError

#: the distribution whose version `hap --version` prints
DISTRIBUTION = "hap-prerank"

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
#: each subcommand's line in `hap --help` and the opening of its own `--help`: spelled here only, so
#: that `hap --help` says it without importing the module (the modules' ``add_parser`` gives no ``help``)
SUMMARIES: dict[str, str] = {
    "stack": "start, stop or check the local Kafka, Redis and Prometheus",
    "simulate": "emit simulated or replayed cascade traffic",
    "streams": "join the Kafka events into hybrid sample groups",
    "learner": "train both tiers online and publish versions to Redis",
    "router": "serve pre-ranking over HTTP (DAMR, hot-swapped versions)",
    "models": "list the kept model versions, roll back to one or pin one (nothing supersedes it until unpinned)",
    "dlq": "list, show and replay dead letters (the rejected inputs)",
    "demo": "run the whole pipeline locally and write a report",
    "replay": "replay a MIND log through the live pipeline, report quality",
    "eval": "offline: GHCL against baselines, paired by time block",
    "dashboards": "build dashboards and alert rules, or push them to Grafana",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless it says it in words (a default that
    depends on the settings, or none) or the flag takes no value."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or action.default is None or action.nargs == 0:
            return text
        return super()._get_help_string(action)


class Subcommands(argparse._SubParsersAction):
    """The subparsers of `hap`: each gets its line of :data:`SUMMARIES` and :class:`HelpFormatter`."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if "help" in kwargs:
            raise ValueError(f"hap {name}: its help line is spelled in deploy.cli.SUMMARIES, not in add_parser")
        kwargs.setdefault("description", SUMMARIES[name])
        kwargs.setdefault("formatter_class", HelpFormatter)
        return super().add_parser(name, help=SUMMARIES[name], **kwargs)


def package_version() -> str:
    """The installed version of this package, as `hap --version` prints it."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed; `pip install -e .`)"


def _stack_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stack")
    p.add_argument("action", choices=["up", "down", "status"],
                   help="up: start what is not running; down: stop what `up` started; status: exit 0 when all answer")
    p.add_argument("--json", action="store_true", help="machine-readable endpoints and status")
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
    parser = argparse.ArgumentParser(prog="hap", description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, action=Subcommands, metavar="COMMAND",
                                help="`hap COMMAND --help` for its flags")
    _stack_parser(sub)
    for name, module in SUBCOMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name)  # its summary, without importing the module
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
    settings = Settings.load()
    try:
        configure(settings.log_level, settings.log_format)
    except LoggingSettingError as exc:
        print(f"hap: {env_name(exc.field)}: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except StackError as exc:
        print(as_log_line(f"hap: {exc}", "hap", logging.ERROR), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
