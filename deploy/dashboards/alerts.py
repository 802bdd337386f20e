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
>>> stale = next(a for a in ALERTS if a.name == "HapModelStale")
>>> stale.promql(), stale.runbook_url()
('hap_router_model_age_seconds > 300 unless hap_router_model_pinned > 0', 'docs/operations.md#hapmodelstale')
"""

from __future__ import annotations

import dataclasses
from typing import Any

from deploy.dashboards.panels import DATASOURCE

RULE_GROUP = "hap"
JOB = "hap"  # the scrape job of the pipeline's components (the local stack's Prometheus names it so)
COMPONENTS = ("streams", "learner", "router")
#: where each alert's runbook is: a heading of this file (the alert's ``runbook`` is its anchor), a path relative
#: to the repository; a deployment that serves the docs elsewhere rewrites the prefix
RUNBOOK = "docs/operations.md"
_GRAFANA_OPS = {">": "gt", "<": "lt"}


@dataclasses.dataclass(frozen=True, slots=True)
class Alert:
    """Fires, per series, when ``query`` ``op`` ``threshold`` holds for ``for_``.

    ``query`` is PromQL returning one series per target it concerns: it keeps the labels that say
    where (``namespace``, ``pod``, ``instance``, ``component``: aggregations are ``without`` the
    labels they sum over). ``guard``, when set, is a set operation after the comparison (``unless
    EXPR`` or ``and on (...) EXPR``): series it removes do not fire. ``absent_ok`` says that no data
    at all is normal (the query returns series only when something is wrong, e.g. ``absent()``).
    ``runbook``: the anchor of the alert's heading in :data:`RUNBOOK` (its name, lower case, unless
    alerts share a heading).
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
    guard: str = ""
    runbook: str = ""

    def promql(self) -> str:
        """The alert's condition as one PromQL expression."""
        return f"{self.query} {self.op} {self.threshold:g}" + (f" {self.guard}" if self.guard else "")

    def series_query(self) -> str:
        """The series the threshold applies to, the guard applied (Grafana's query, before its threshold)."""
        return f"{self.query} {self.guard}" if self.guard else self.query

    def runbook_url(self) -> str:
        return f"{RUNBOOK}#{self.runbook or self.name.lower()}"


#: the per-replica served version behind the newest version any replica of its namespace served 2 minutes
#: earlier (>= 0 for a replica that keeps up; scrapes minutes apart never make it positive)
VERSION_BEHIND = ("max by (namespace) (hap_router_model_version offset 2m) - on (namespace) group_right "
                  "hap_router_model_version")
_DEAD_LETTERS = "rate(hap_streams_invalid_total[5m])"
#: the target an alert names in its description: ``ns/pod instance`` on Kubernetes, ``instance`` elsewhere
WHERE = "{{ with $labels.namespace }}{{ . }}/{{ end }}{{ with $labels.pod }}{{ . }} {{ end }}{{ $labels.instance }}"

ALERTS: list[Alert] = [
    Alert("hap-component-down", "HapComponentDown", "A pipeline component is down", f'up{{job="{JOB}"}}', "<", 1,
          "{{ $labels.component }} (" + WHERE + ") has not answered its metrics scrape for a minute: the process is "
          "down or wedged.", for_="1m", severity="critical"),
    *[Alert(f"hap-{c}-absent", f"Hap{c.capitalize()}Absent", f"No {c} is scraped",
            f'absent(up{{job="{JOB}",component="{c}"}})', ">", 0,
            f"Prometheus has no {c} target at all: the scrape configuration lost it, or it was never deployed.",
            for_="5m", severity="critical", absent_ok=True, runbook="hapcomponentabsent") for c in COMPONENTS],
    Alert("hap-streams-restart-loop", "HapStreamsRestartLoop", "Streams worker restarting repeatedly",
          "sum without (reason) (increase(hap_streams_worker_exits_total[15m]))", ">", 2,
          "The streams worker of " + WHERE + " was restarted 3 or more times in 15 minutes "
          "(hap_streams_worker_exits_total by reason): read the worker log; a crash loop makes no progress.",
          for_="0m", severity="critical"),
    Alert("hap-model-stale", "HapModelStale", "Served model is stale", "hap_router_model_age_seconds", ">", 300,
          "The router " + WHERE + " serves a model trained on events older than 5 minutes: is the learner "
          "running? (Not while the served version is pinned: a pin makes the age grow.)",
          guard="unless hap_router_model_pinned > 0"),
    Alert("hap-router-versions-differ", "HapRouterVersionsDiffer", "Router replicas serve different versions",
          VERSION_BEHIND, ">", 0,
          "The router " + WHERE + " has served, for 10 minutes, a version older than the newest one another "
          "replica served 2 minutes before: it does not take new versions (hap_router_model_version by pod).",
          for_="10m"),
    Alert("hap-store-unreachable", "HapModelStoreUnreachable", "Router cannot reach the model store",
          "hap_router_model_store_contact_age_seconds", ">", 60,
          "The router " + WHERE + " has not reached Redis for a minute; it keeps serving its last version."),
    Alert("hap-dead-letters", "HapDeadLetters", "Dead-letter rate", f"sum without (reason_kind) ({_DEAD_LETTERS})",
          ">", 0, "More than one event per second goes to the dead-letter topic; the worker " + WHERE
          + " dead-letters records of {{ $labels.topic }}: check its producers (hap_streams_invalid_total by "
          "reason_kind).", guard=f"and on (namespace) sum by (namespace) ({_DEAD_LETTERS}) > 1"),
    Alert("hap-streams-consumer-lag", "HapStreamsConsumerLag", "Streams consumer lag",
          "sum by (namespace, group, topic) (max by (namespace, group, topic, partition) "
          "(hap_streams_consumer_lag_records))", ">", 50_000,
          "The streams group {{ $labels.group }} {{ with $labels.namespace }}({{ . }}) {{ end }}has left more "
          "than 50,000 records of {{ $labels.topic }} uncommitted for 10 minutes (a worker takes 2,000-4,000 "
          "events/s): the workers do not keep up, or a partition is not read (hap_streams_consumer_lag_records by "
          "partition; the worker log).", for_="10m"),
    Alert("hap-publish-failing", "HapLearnerCannotPublish", "Learner cannot publish",
          "rate(hap_learner_publish_errors_total[5m])", ">", 0.1,
          "The learner " + WHERE + " fails to publish to Redis: it keeps training and retries; the served model "
          "ages."),
    Alert("hap-router-errors", "HapRouterErrors", "Router errors",
          'sum without (kind) (rate(hap_router_errors_total{kind!~"bad_request|too_large|not_ready"}[5m]))', ">",
          0.5, "The router " + WHERE + " reports internal errors or answers 5xx (model load, Redis, a failed "
          "request): hap_router_errors_total by kind."),
]


def prometheus_rules() -> dict[str, Any]:
    """The rule file Prometheus loads (``rule_files``), as a document to write as YAML."""
    return {"groups": [{"name": RULE_GROUP, "rules": [
        {"alert": a.name, "expr": a.promql(), "for": a.for_,
         "labels": {"severity": a.severity, "team": "hap"},
         "annotations": {"summary": a.title, "description": a.summary, "runbook_url": a.runbook_url()}}
        for a in ALERTS]}]}


def _grafana_rule(a: Alert, folder_uid: str) -> dict[str, Any]:
    return {
        "uid": a.uid, "title": a.title, "condition": "C", "for": a.for_,
        # no series is normal where the query (or its guard) returns only the series in trouble
        "noDataState": "OK" if a.absent_ok or a.guard else "NoData", "execErrState": "Error",
        "annotations": {"summary": a.summary, "runbook_url": a.runbook_url()},
        "labels": {"team": "hap", "severity": a.severity},
        "data": [
            {"refId": "A", "datasourceUid": DATASOURCE["uid"], "relativeTimeRange": {"from": 900, "to": 0},
             "model": {"refId": "A", "expr": a.series_query(), "instant": True}},
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
