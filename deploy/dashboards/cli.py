"""`hap dashboards build|push`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[1]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboards")
    p.add_argument("action", choices=["build", "push"], help="build: write the files; push: provision Grafana")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="build: writes grafana/ (dashboards, alert rules, provisioning/) and prometheus/ under it")
    from deploy.settings import GRAFANA_TOKEN_ENV, GRAFANA_URL_ENV

    p.add_argument("--url", default=None, help=f"Grafana's URL (default: {GRAFANA_URL_ENV}); the API token is read "
                   f"from {GRAFANA_TOKEN_ENV} only, never from a flag (argv is visible to every user of the machine)")
    p.add_argument("--token", default=None, help=argparse.SUPPRESS)  # removed: refused with a pointer to the env
    p.add_argument("--prometheus-url", default=None,
                   help="URL Grafana uses to reach Prometheus (default: the settings' Prometheus URL)")


def run(args: argparse.Namespace) -> int:
    from deploy.dashboards.export import write
    from deploy.dashboards.push import DashboardPushError, push

    if args.action == "build":
        for path in write(args.out):
            print(path)
        return 0
    from deploy.settings import GRAFANA_TOKEN_ENV, GRAFANA_URL_ENV, Settings

    if args.token is not None:
        print(f"hap dashboards push: --token is not accepted (a secret in argv is visible to every user of the "
              f"machine): set {GRAFANA_TOKEN_ENV} instead", file=sys.stderr)
        return 2
    settings = Settings.load()
    url = args.url or settings.grafana_url
    if not url or not settings.grafana_token:
        print(f"hap dashboards push: --url (or {GRAFANA_URL_ENV}) and {GRAFANA_TOKEN_ENV} are required",
              file=sys.stderr)
        return 2
    try:
        counts = push(url, settings.grafana_token, args.prometheus_url or settings.prometheus_url)
    except DashboardPushError as exc:
        print(f"hap dashboards push: {exc}")
        return 1
    print(f"provisioned {counts['dashboards']} dashboards and {counts['alert_rules']} alert rules at {url}")
    return 0
