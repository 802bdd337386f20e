"""Dashboards as code: well-formed, and every panel's PromQL is accepted by a real Prometheus."""

import json
import urllib.parse
import urllib.request

from deploy.dashboards.alerts import all_rules
from deploy.dashboards.definitions import all_dashboards, all_queries


def test_panels_are_well_formed():
    for dash in all_dashboards():
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)) and dash["uid"].startswith("hap-")
        assert all(p["datasource"]["uid"] == "hap-prometheus" and p["targets"] for p in dash["panels"])
    assert {r["uid"] for r in all_rules("hap")} >= {"hap-model-stale", "hap-dead-letters"}


def test_every_query_parses_in_prometheus(prometheus_url):
    for dashboard, panel, expr in all_queries():
        url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert json.loads(resp.read())["status"] == "success", (dashboard, panel, expr)
