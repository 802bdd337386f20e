"""`hap dashboards build|push`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "grafana"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboards", help="build Grafana dashboards as JSON or push them to Grafana")
    p.add_argument("action", choices=["build", "push"])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--url", default=os.environ.get("HAP_GRAFANA_URL"))
    p.add_argument("--token", default=None, help="API token (default: HAP_GRAFANA_TOKEN; never printed)")
    p.add_argument("--prometheus-url", default=None, help="URL Grafana uses to reach Prometheus")


def run(args: argparse.Namespace) -> int:
    from deploy.dashboards.alerts import all_rules
    from deploy.dashboards.definitions import all_dashboards
    from deploy.dashboards.push import FOLDER_UID, DashboardPushError, push

    if args.action == "build":
        args.out.mkdir(parents=True, exist_ok=True)
        for dash in all_dashboards():
            (args.out / f"{dash['uid']}.json").write_text(json.dumps(dash, indent=2) + "\n")
        (args.out / "alert-rules.json").write_text(json.dumps(all_rules(FOLDER_UID), indent=2) + "\n")
        print(f"wrote {len(all_dashboards())} dashboards and the alert rules to {args.out}")
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
