"""The alerts, defined once and written three ways: a Prometheus rule file (loaded by the local
stack's Prometheus, checked with ``promtool``), Grafana alert rules for the provisioning API
(``hap dashboards push``) and the same rules in Grafana's file-provisioning format.

Examples
--------
>>> a = next(a for a in ALERTS if a.uid == "hap-component-down")
>>> a.promql()
'up{job="hap"} < 1'
>>> prometheus_rules()["groups"][0]["rules"][0]["alert"]
'HapComponentDown'
"""

from __future__ import annotations

import dataclasses
from typing import Any

from deploy.dashboards.panels import DATASOURCE

RULE_GROUP = "hap"
JOB = "hap"  # the scrape job of the pipeline's components (the local stack's Prometheus names it so)
COMPONENTS = ("streams", "learner", "router")
_GRAFANA_OPS = {">": "gt", "<": "lt"}


@dataclasses.dataclass(frozen=True, slots=True)
class Alert:
    """Fires when ``query`` ``op`` ``threshold`` holds for ``for_``.

    ``query`` is PromQL returning one value per series; ``absent_ok`` says that no data at all
    is normal (the query returns series only when something is wrong, e.g. ``absent()``).
    """

    uid: str
    name: str
    title: str
    query: str
    op: str
    threshold: float
    summary: str
    for_: str = "2m"
    severity: str = "warning"
    absent_ok: bool = False

    def promql(self) -> str:
        """The alert's condition as one PromQL expression."""
        return f"{self.query} {self.op} {self.threshold:g}"


ALERTS: list[Alert] = [
    Alert("hap-component-down", "HapComponentDown", "A pipeline component is down", f'up{{job="{JOB}"}}', "<", 1,
          "{{ $labels.component }} ({{ $labels.instance }}) has not answered its metrics scrape for a minute: "
          "the process is down or wedged.", for_="1m", severity="critical"),
    *[Alert(f"hap-{c}-absent", f"Hap{c.capitalize()}Absent", f"No {c} is scraped",
            f'absent(up{{job="{JOB}",component="{c}"}})', ">", 0,
            f"Prometheus has no {c} target at all: the scrape configuration lost it, or it was never deployed.",
            for_="5m", severity="critical", absent_ok=True) for c in COMPONENTS],
    Alert("hap-streams-restart-loop", "HapStreamsRestartLoop", "Streams worker restarting repeatedly",
          "sum by (instance) (increase(hap_streams_worker_exits_total[15m]))", ">", 2,
          "The streams worker was restarted 3 or more times in 15 minutes (hap_streams_worker_exits_total by "
          "reason): read the worker log; a crash loop makes no progress.", for_="0m", severity="critical"),
    Alert("hap-model-stale", "HapModelStale", "Served model is stale", "max(hap_router_model_age_seconds)", ">", 300,
          "The router serves a model trained on events older than 5 minutes: is the learner running?"),
    Alert("hap-store-unreachable", "HapModelStoreUnreachable", "Router cannot reach the model store",
          "max(hap_router_staleness_seconds)", ">", 60,
          "The router has not reached Redis for a minute; it keeps serving its last version."),
    Alert("hap-dead-letters", "HapDeadLetters", "Dead-letter rate", "sum(rate(hap_streams_invalid_total[5m]))", ">",
          1.0, "More than one event per second goes to the dead-letter topic: check the producers "
          "(hap_streams_invalid_total by reason_kind)."),
    Alert("hap-streams-consumer-lag", "HapStreamsConsumerLag", "Streams consumer lag",
          "sum by (group, topic) (max by (group, topic, partition) (hap_streams_consumer_lag_records))", ">", 50_000,
          "The streams group {{ $labels.group }} has left more than 50,000 records of {{ $labels.topic }} "
          "uncommitted for 10 minutes (a worker takes 2,000-4,000 events/s): the workers do not keep up, or a "
          "partition is not read (hap_streams_consumer_lag_records by partition; the worker log).", for_="10m"),
    Alert("hap-publish-failing", "HapLearnerCannotPublish", "Learner cannot publish",
          "sum(rate(hap_learner_publish_errors_total[5m]))", ">", 0.1,
          "The learner's publishes to Redis fail: it keeps training and retries; the served model ages."),
    Alert("hap-router-errors", "HapRouterErrors", "Router errors",
          'sum(rate(hap_router_errors_total{kind!~"bad_request|too_large|not_ready"}[5m]))', ">", 0.5,
          "The router reports internal errors or answers 5xx (model load, Redis, a failed request)."),
]


def prometheus_rules() -> dict[str, Any]:
    """The rule file Prometheus loads (``rule_files``), as a document to write as YAML."""
    return {"groups": [{"name": RULE_GROUP, "rules": [
        {"alert": a.name, "expr": a.promql(), "for": a.for_,
         "labels": {"severity": a.severity, "team": "hap"},
         "annotations": {"summary": a.title, "description": a.summary}}
        for a in ALERTS]}]}


def _grafana_rule(a: Alert, folder_uid: str) -> dict[str, Any]:
    return {
        "uid": a.uid, "title": a.title, "condition": "C", "for": a.for_,
        "noDataState": "OK" if a.absent_ok else "NoData", "execErrState": "Error",
        "annotations": {"summary": a.summary}, "labels": {"team": "hap", "severity": a.severity},
        "data": [
            {"refId": "A", "datasourceUid": DATASOURCE["uid"], "relativeTimeRange": {"from": 900, "to": 0},
             "model": {"refId": "A", "expr": a.query, "instant": True}},
            {"refId": "B", "datasourceUid": "__expr__", "relativeTimeRange": {"from": 0, "to": 0},
             "model": {"refId": "B", "type": "reduce", "expression": "A", "reducer": "last"}},
            {"refId": "C", "datasourceUid": "__expr__", "relativeTimeRange": {"from": 0, "to": 0},
             "model": {"refId": "C", "type": "threshold", "expression": "B",
                       "conditions": [{"evaluator": {"type": _GRAFANA_OPS[a.op], "params": [a.threshold]}}]}},
        ],
    }


def all_rules(folder_uid: str) -> list[dict[str, Any]]:
    """Grafana alert rules in the provisioning API's format (``hap dashboards push``)."""
    return [{**_grafana_rule(a, folder_uid), "ruleGroup": RULE_GROUP, "folderUID": folder_uid} for a in ALERTS]


def provisioning_rules(folder: str = "HAP", interval: str = "1m") -> dict[str, Any]:
    """The same rules in Grafana's file-provisioning format (``provisioning/alerting/*.yaml``)."""
    return {"apiVersion": 1, "groups": [{"orgId": 1, "name": RULE_GROUP, "folder": folder, "interval": interval,
                                         "rules": [_grafana_rule(a, "") for a in ALERTS]}]}
