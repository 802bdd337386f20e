"""Dashboards and alerts as code: well-formed, every panel described, generated files current, every
panel's and annotation's PromQL and every alert accepted by a real Prometheus, the rule file passing
`promtool check rules` and its unit tests (every alert keeps the labels that say where, and links a
runbook heading that exists), the annotations marking what they name, and the rules loaded by the
local stack's Prometheus."""

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

from deploy.dashboards.alerts import ALERTS, RUNBOOK, all_rules, prometheus_rules, provisioning_rules
from deploy.dashboards.definitions import ANNOTATIONS, all_dashboards, all_queries
from deploy.dashboards.export import DEPLOY, files, to_yaml
from deploy.stack.process import free_port
from deploy.stack.services import write_targets

PROMTOOL_TESTS = Path(__file__).parent / "hap-alerts.test.yml"
ROOT = DEPLOY.parent
#: alerts about a consumer group, not a pod: every streams worker exports its group's lag
PER_GROUP = {"HapStreamsConsumerLag"}


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
            assert len(p["description"]) > 40, (dash["title"], p["title"])  # says what it shows
        assert [a["name"] for a in dash["annotations"]["list"]] == [a.name for a in ANNOTATIONS]
        assert all(a["datasource"]["uid"] == "${datasource}" and a["target"]["expr"] == a["expr"]
                   for a in dash["annotations"]["list"])
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
        assert p["expr"] == a.promql() and g["data"][0]["model"]["expr"] == a.series_query()
        assert g["data"][2]["model"]["conditions"][0]["evaluator"]["params"] == [a.threshold]
    doc = yaml.safe_load((DEPLOY / "grafana/provisioning/alerting/hap-alerts.yaml").read_text())
    assert doc["apiVersion"] == 1 and doc["groups"][0]["rules"] == provisioned


def test_promtool_checks_the_rule_file_and_its_unit_tests(tmp_path):
    binary = promtool()
    rules = DEPLOY / "prometheus" / "hap.rules.yml"
    out = subprocess.run([binary, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and f"{len(ALERTS)} rules found" in out.stdout, out.stdout + out.stderr
    test_file = tmp_path / "alerts.test.yml"  # the unit tests, pointed at the rule file
    test_file.write_text(to_yaml(promtool_tests(rules)))
    out = subprocess.run([binary, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def promtool_tests(rules: Path) -> dict:
    """hap-alerts.test.yml pointed at ``rules``, each expected alert's static annotations filled in."""
    doc = yaml.safe_load(PROMTOOL_TESTS.read_text())
    doc["rule_files"] = [str(rules)]
    by_name = {a.name: a for a in ALERTS}
    for test in doc["tests"]:
        for case in test["alert_rule_test"]:
            a = by_name[case["alertname"]]
            for expected in case["exp_alerts"]:
                expected["exp_annotations"] = {"summary": a.title, "runbook_url": a.runbook_url(),
                                               **expected["exp_annotations"]}
    return doc


def test_every_alert_fires_in_a_unit_test_naming_where():
    """Each alert (but the absent target ones, which have no target to name) fires in a promtool case
    with the namespace, pod and instance labels of a Kubernetes scrape, and keeps them."""
    doc = yaml.safe_load(PROMTOOL_TESTS.read_text())
    fired = {}
    for test in doc["tests"]:
        for case in test["alert_rule_test"]:
            fired.setdefault(case["alertname"], []).extend(e["exp_labels"] for e in case["exp_alerts"])
    for a in ALERTS:
        if a.absent_ok:
            continue
        assert fired.get(a.name), f"{a.name} fires in no case of {PROMTOOL_TESTS.name}"
        where = {"namespace", "group"} if a.name in PER_GROUP else {"namespace", "pod", "instance"}
        assert any(where <= set(labels) for labels in fired[a.name]), (a.name, fired[a.name])


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of ``markdown`` (lower case, punctuation dropped, spaces to dashes;
    a repeated heading gets ``-1``, ``-2``...)."""
    seen: dict[str, int] = {}
    out = set()
    for line in markdown.splitlines():
        heading = re.match(r"#{1,6} (.+)", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def test_every_alert_links_a_runbook_heading_that_exists():
    anchors = github_anchors((ROOT / RUNBOOK).read_text())
    for rule in prometheus_rules()["groups"][0]["rules"] + all_rules("hap"):
        url = rule["annotations"]["runbook_url"]
        path, anchor = url.split("#")
        assert path == RUNBOOK and anchor in anchors, (url, sorted(a for a in anchors if a.startswith("hap")))


def annotation_tests() -> dict:
    """promtool cases for the annotations: a replica rolled back at minute 5, one pinned from minute 5, the learner
    held back by that pin, swaps every minute until minute 5: each annotation returns its replica at the moment it
    names, nothing before."""
    where = 'job="hap",namespace="hap",pod="router-0",instance="10.0.0.1:8080"'
    learner = 'job="hap",namespace="hap",pod="learner-0",instance="10.0.0.6:9102"'
    series = [(f"hap_router_model_version{{{where}}}", "100+10x4 60x5"),
              (f"hap_router_model_pinned{{{where}}}", "0x4 1x5"),
              (f"hap_learner_publish_pinned{{{learner}}}", "0x4 60x5"),
              (f"hap_router_swaps_total{{{where}}}", "0+10x4 40x5")]
    router_labels = {"namespace": "hap", "pod": "router-0", "instance": "10.0.0.1:8080"}
    learner_labels = {"namespace": "hap", "pod": "learner-0", "instance": "10.0.0.6:9102"}
    exprs = {a.name: a.expr for a in ANNOTATIONS}
    cases = [("Rollbacks", "4m", []), ("Rollbacks", "5m", [(router_labels, 60)]), ("Rollbacks", "7m", []),
             ("Pinned version served", "4m", []), ("Pinned version served", "6m", [(router_labels, 1)]),
             ("Learner held back by a pin", "4m", []), ("Learner held back by a pin", "6m", [(learner_labels, 60)]),
             ("Version swaps", "3m", [(router_labels, 10)]), ("Version swaps", "7m", [])]
    assert {name for name, _, _ in cases} == set(exprs)
    return {"evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": [{"series": s, "values": v} for s, v in series],
        "promql_expr_test": [{"expr": exprs[name], "eval_time": at,
                              "exp_samples": [{"labels": _selector(labels), "value": value} for labels, value in exp]}
                             for name, at, exp in cases]}]}


def _selector(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def test_annotations_mark_rollbacks_pins_and_swaps(tmp_path):
    binary = promtool()
    test_file = tmp_path / "annotations.test.yml"
    test_file.write_text(to_yaml(annotation_tests()))
    out = subprocess.run([binary, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def test_every_query_parses_in_prometheus(prometheus_url):
    annotations = [("annotations", a.name, a.expr) for a in ANNOTATIONS]
    for dashboard, panel, expr in all_queries("1m") + annotations + [("alerts", a.name, a.promql()) for a in ALERTS]:
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
