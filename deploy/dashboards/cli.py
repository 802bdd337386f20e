"""`hap dashboards build|push`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[1]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboards", help="build dashboards and alert rules as files, or push them to Grafana")
    p.add_argument("action", choices=["build", "push"])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="build: writes grafana/ (dashboards, alert rules, provisioning/) and prometheus/ under it")
    p.add_argument("--url", default=os.environ.get("HAP_GRAFANA_URL"))
    p.add_argument("--token", default=None, help="API token (default: HAP_GRAFANA_TOKEN; never printed)")
    p.add_argument("--prometheus-url", default=None, help="URL Grafana uses to reach Prometheus")


def run(args: argparse.Namespace) -> int:
    from deploy.dashboards.export import write
    from deploy.dashboards.push import DashboardPushError, push

    if args.action == "build":
        for path in write(args.out):
            print(path)
        return 0
    token = args.token or os.environ.get("HAP_GRAFANA_TOKEN")
    if not args.url or not token:
        print("hap dashboards push: --url (or HAP_GRAFANA_URL) and HAP_GRAFANA_TOKEN are required")
        return 2
    from deploy.settings import Settings

    try:
        counts = push(args.url, token, args.prometheus_url or Settings.load().prometheus_url)
    except DashboardPushError as exc:
        print(f"hap dashboards push: {exc}")
        return 1
    print(f"provisioned {counts['dashboards']} dashboards and {counts['alert_rules']} alert rules at {args.url}")
    return 0
