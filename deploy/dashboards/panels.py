"""Small typed builders of Grafana dashboard JSON (schema of Grafana 10/11).

Panels query the data source chosen in the dashboard's ``datasource`` variable (any Prometheus
data source; imported by hand, Grafana asks for it) and rate over ``$__rate_interval``. Every panel
says what it shows and what to do when it looks wrong (its ``description``, Grafana's (i) tooltip);
annotations mark events (a rollback, a pin) on every panel of a dashboard.
"""

from __future__ import annotations

import dataclasses
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "hap-prometheus"}  # provisioned by `hap dashboards push`; alerts use it
PANEL_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
TEMPLATING = {"list": [{
    "name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus", "refresh": 1,
    "current": {"text": "HAP Prometheus", "value": DATASOURCE["uid"]}, "hide": 0, "includeAll": False,
    "multi": False, "options": [], "regex": "",
}]}


@dataclasses.dataclass(frozen=True, slots=True)
class Panel:
    """A panel: title, its PromQL queries ``(expr, legend)`` (``[rate]`` stands for the dashboard's
    rate interval), one unit for its axis, kind, and a description (required: what it shows, what
    to look at when it looks wrong)."""

    title: str
    queries: tuple[tuple[str, str], ...]
    unit: str = "short"
    kind: str = "timeseries"
    description: str = dataclasses.field(kw_only=True)

    def to_json(self, panel_id: int, x: int, y: int, w: int = 12, h: int = 8) -> dict[str, Any]:
        return {
            "id": panel_id, "type": self.kind, "title": self.title, "description": self.description,
            "datasource": PANEL_DATASOURCE, "gridPos": {"x": x, "y": y, "w": w, "h": h},
            "fieldConfig": {"defaults": {"unit": self.unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if self.kind == "timeseries" else {},
            "targets": [{"refId": chr(ord("A") + i), "datasource": PANEL_DATASOURCE,
                         "expr": expr.replace("[rate]", f"[{RATE}]"), "legendFormat": legend}
                        for i, (expr, legend) in enumerate(self.queries)],
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Annotation:
    """A Prometheus annotation query: every step at which ``expr`` returns a series marks the panels
    (Grafana joins consecutive steps of one series into a region). ``text`` and ``title`` are legend
    formats (``{{label}}``); ``step`` is the query's resolution, and the window of any range in ``expr``
    must be at least as long, or events between two steps go unmarked."""

    name: str
    expr: str
    title: str
    text: str
    color: str
    enable: bool = True
    step: str = "1m"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "datasource": PANEL_DATASOURCE, "enable": self.enable, "hide": False,
            "iconColor": self.color, "expr": self.expr, "step": self.step, "titleFormat": self.title,
            "textFormat": self.text, "tagKeys": "namespace,pod,instance", "useValueForTime": False,
            "target": {"refId": "Anno", "expr": self.expr, "interval": self.step},
        }


def dashboard(uid: str, title: str, panels: list[Panel], description: str = "",
              annotations: tuple[Annotation, ...] = ()) -> dict[str, Any]:
    """A dashboard with its panels laid out two per row."""
    return {
        "uid": uid, "title": title, "description": description, "tags": ["hap"], "timezone": "browser",
        "schemaVersion": 39, "refresh": "5s", "time": {"from": "now-30m", "to": "now"}, "templating": TEMPLATING,
        "annotations": {"list": [a.to_json() for a in annotations]},
        "panels": [p.to_json(i + 1, 12 * (i % 2), 8 * (i // 2)) for i, p in enumerate(panels)],
    }


def quantile(q: float, histogram: str, by: str = "") -> str:
    """PromQL for the ``q`` quantile of a histogram over the dashboard's rate interval."""
    group = f"le{', ' + by if by else ''}"
    return f"histogram_quantile({q}, sum by ({group}) (rate({histogram}_bucket[rate])))"
