"""Grafana alert rules (provisioning API format): staleness, dead-letter rate, router errors."""

from __future__ import annotations

from typing import Any

from deploy.dashboards.panels import DATASOURCE

RULE_GROUP = "hap"


def rule(uid: str, title: str, expr: str, threshold: float, summary: str, folder_uid: str, for_: str = "2m") \
        -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "ruleGroup": RULE_GROUP, "folderUID": folder_uid, "condition": "C",
        "for": for_, "noDataState": "NoData", "execErrState": "Error",
        "annotations": {"summary": summary}, "labels": {"team": "hap"},
        "data": [
            {"refId": "A", "datasourceUid": DATASOURCE["uid"], "relativeTimeRange": {"from": 600, "to": 0},
             "model": {"refId": "A", "expr": expr, "instant": True}},
            {"refId": "C", "datasourceUid": "__expr__", "relativeTimeRange": {"from": 0, "to": 0},
             "model": {"refId": "C", "type": "threshold", "expression": "A",
                       "conditions": [{"evaluator": {"type": "gt", "params": [threshold]}}]}},
        ],
    }


def all_rules(folder_uid: str) -> list[dict[str, Any]]:
    return [
        rule("hap-model-stale", "Served model is stale", "max(hap_router_model_age_seconds)", 300,
             "The router serves a model trained on events older than 5 minutes: is the learner running?", folder_uid),
        rule("hap-store-unreachable", "Router cannot reach the model store", "max(hap_router_staleness_seconds)", 60,
             "The router has not reached Redis for a minute; it keeps serving its last version.", folder_uid),
        rule("hap-dead-letters", "Dead-letter rate", "sum(rate(hap_streams_invalid_total[5m]))", 1.0,
             "More than one event per second goes to the dead-letter topic: check the producers.", folder_uid),
        rule("hap-publish-failing", "Learner cannot publish", "sum(rate(hap_learner_publish_errors_total[5m]))",
             0.1, "The learner's publishes to Redis fail: it keeps training and retries; the served model ages.",
             folder_uid),
        rule("hap-router-errors", "Router errors",
             'sum(rate(hap_router_errors_total{kind!~"bad_request|too_large|not_ready"}[5m]))',
             0.5, "The router reports internal errors (model load, Redis).", folder_uid),
    ]
