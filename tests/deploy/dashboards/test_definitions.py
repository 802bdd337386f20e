"""Dashboards and alerts as code: well-formed, generated files current, every panel's PromQL and every
alert accepted by a real Prometheus, the rule file passing `promtool check rules` and its unit tests,
and loaded by the local stack's Prometheus."""

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from deploy.dashboards.alerts import ALERTS, all_rules, prometheus_rules, provisioning_rules
from deploy.dashboards.definitions import all_dashboards, all_queries
from deploy.dashboards.export import DEPLOY, files
from deploy.stack.process import free_port
from deploy.stack.services import write_targets

PROMTOOL_TESTS = Path(__file__).parent / "hap-alerts.test.yml"


def promtool() -> str:
    binary = shutil.which("promtool")
    if not binary:
        pytest.skip("promtool not found: it ships with Debian's prometheus package (`make setup`)")
    return binary


def test_panels_are_well_formed():
    for dash in all_dashboards():
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)) and dash["uid"].startswith("hap-")
        assert [v["name"] for v in dash["templating"]["list"]] == ["datasource"]
        for p in dash["panels"]:
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"]
            assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"])
            assert isinstance(p["fieldConfig"]["defaults"]["unit"], str)  # one unit per panel's axis
    for _, panel, expr in all_queries():
        assert not re.search(r"\[\d+[smh]\]", expr.replace("[15m]", "")), (panel, expr)  # rates: $__rate_interval
        assert "rate(" not in expr or "$__rate_interval" in expr or "[15m]" in expr, (panel, expr)
    assert {r["uid"] for r in all_rules("hap")} >= {"hap-model-stale", "hap-dead-letters", "hap-component-down",
                                                      "hap-streams-restart-loop"}


def test_generated_files_are_current():
    for rel, content in files().items():
        path = DEPLOY / rel
        assert path.exists() and path.read_text() == content, f"deploy/{rel} is stale: run `hap dashboards build`"


def test_grafana_rules_and_prometheus_rules_come_from_the_same_alerts():
    prom = prometheus_rules()["groups"][0]["rules"]
    api, provisioned = all_rules("hap"), provisioning_rules()["groups"][0]["rules"]
    assert [r["alert"] for r in prom] == [a.name for a in ALERTS]
    assert [r["uid"] for r in api] == [r["uid"] for r in provisioned] == [a.uid for a in ALERTS]
    for a, p, g in zip(ALERTS, prom, provisioned, strict=True):
        assert p["expr"] == a.promql() and g["data"][0]["model"]["expr"] == a.query
        assert g["data"][2]["model"]["conditions"][0]["evaluator"]["params"] == [a.threshold]
    doc = yaml.safe_load((DEPLOY / "grafana/provisioning/alerting/hap-alerts.yaml").read_text())
    assert doc["apiVersion"] == 1 and doc["groups"][0]["rules"] == provisioned


def test_promtool_checks_the_rule_file_and_its_unit_tests(tmp_path):
    binary = promtool()
    rules = DEPLOY / "prometheus" / "hap.rules.yml"
    out = subprocess.run([binary, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and f"{len(ALERTS)} rules found" in out.stdout, out.stdout + out.stderr
    test_file = tmp_path / "alerts.test.yml"  # the unit tests, pointed at the rule file
    test_file.write_text(PROMTOOL_TESTS.read_text().replace("RULES_FILE", str(rules)))
    out = subprocess.run([binary, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def test_every_query_parses_in_prometheus(prometheus_url):
    for dashboard, panel, expr in all_queries("1m") + [("alerts", a.name, a.promql()) for a in ALERTS]:
        url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        assert _get(url)["status"] == "success", (dashboard, panel, expr)


def test_the_local_stack_prometheus_loads_the_rules_and_fires_on_a_component_down(prometheus_url, hap_settings):
    groups = _get(f"{prometheus_url}/api/v1/rules")["data"]["groups"]
    loaded = {r["name"] for g in groups for r in g["rules"]}
    assert loaded == {a.name for a in ALERTS}
    # components on ports where nothing listens: down (the alert is pending at once, firing after its 1m)
    write_targets(hap_settings.data_dir, {c: f"127.0.0.1:{free_port()}" for c in ("streams", "learner", "router")})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        alerts = _get(f"{prometheus_url}/api/v1/alerts")["data"]["alerts"]
        down = [a for a in alerts if a["labels"]["alertname"] == "HapComponentDown"]
        if down:
            break
        time.sleep(1)
    assert down and {a["labels"].get("component") for a in down} <= {"streams", "learner", "router"}
