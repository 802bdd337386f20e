"""Everything an operator imports, as files: dashboards (JSON), alert rules for Grafana's API
(JSON) and for its file provisioning (YAML, with the data source and a dashboard provider), and
the Prometheus rule file. ``hap dashboards build`` writes them; the tests check they are current.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from deploy.dashboards.alerts import all_rules, prometheus_rules, provisioning_rules
from deploy.dashboards.definitions import all_dashboards
from deploy.dashboards.panels import DATASOURCE
from deploy.settings import env_name

DEPLOY = Path(__file__).resolve().parents[1]
GRAFANA_DIR = DEPLOY / "grafana"
RULES_FILE = DEPLOY / "prometheus" / "hap.rules.yml"
FOLDER_UID = "hap"
DASHBOARDS_PATH = "/var/lib/grafana/dashboards/hap"  # where the provider reads the dashboards' JSON


def to_yaml(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False, width=120, allow_unicode=True)


def files() -> dict[str, str]:
    """Relative path (under ``deploy/``) -> content of every generated file."""
    out = {f"grafana/{d['uid']}.json": json.dumps(d, indent=2) + "\n" for d in all_dashboards()}
    out["grafana/alert-rules.json"] = json.dumps(all_rules(FOLDER_UID), indent=2) + "\n"
    out["grafana/provisioning/alerting/hap-alerts.yaml"] = to_yaml(provisioning_rules())
    out["grafana/provisioning/datasources/hap-prometheus.yaml"] = to_yaml({"apiVersion": 1, "datasources": [{
        "name": "HAP Prometheus", "uid": DATASOURCE["uid"], "type": "prometheus", "access": "proxy",
        "url": "${" + env_name("prometheus_url") + "}", "isDefault": False}]})
    out["grafana/provisioning/dashboards/hap.yaml"] = to_yaml({"apiVersion": 1, "providers": [{
        "name": "hap", "folder": "HAP", "folderUid": FOLDER_UID, "type": "file", "allowUiUpdates": False,
        "options": {"path": DASHBOARDS_PATH}}]})
    out["prometheus/hap.rules.yml"] = to_yaml(prometheus_rules())
    return out


def write(root: Path = DEPLOY) -> list[Path]:
    """Write every generated file under ``root``; returns their paths."""
    return write_files(files(), root)


def write_files(contents: dict[str, str], root: Path) -> list[Path]:
    """Write ``contents`` (relative path -> text) under ``root``; returns the paths written."""
    written = []
    for rel, content in contents.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        written.append(path)
    return written
