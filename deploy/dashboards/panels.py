"""Small typed builders of Grafana dashboard JSON (schema of Grafana 10/11)."""

from __future__ import annotations

import dataclasses
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "hap-prometheus"}


@dataclasses.dataclass(frozen=True, slots=True)
class Panel:
    """A panel: title, its PromQL queries ``(expr, legend)``, unit and kind."""

    title: str
    queries: tuple[tuple[str, str], ...]
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""

    def to_json(self, panel_id: int, x: int, y: int, w: int = 12, h: int = 8) -> dict[str, Any]:
        return {
            "id": panel_id, "type": self.kind, "title": self.title, "description": self.description,
            "datasource": DATASOURCE, "gridPos": {"x": x, "y": y, "w": w, "h": h},
            "fieldConfig": {"defaults": {"unit": self.unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if self.kind == "timeseries" else {},
            "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
                        for i, (expr, legend) in enumerate(self.queries)],
        }


def dashboard(uid: str, title: str, panels: list[Panel], description: str = "") -> dict[str, Any]:
    """A dashboard with its panels laid out two per row."""
    return {
        "uid": uid, "title": title, "description": description, "tags": ["hap"], "timezone": "browser",
        "schemaVersion": 39, "refresh": "5s", "time": {"from": "now-30m", "to": "now"},
        "panels": [p.to_json(i + 1, 12 * (i % 2), 8 * (i // 2)) for i, p in enumerate(panels)],
    }


def quantile(q: float, histogram: str, by: str = "") -> str:
    """PromQL for the ``q`` quantile of a histogram over the last minute."""
    group = f"le{', ' + by if by else ''}"
    return f"histogram_quantile({q}, sum by ({group}) (rate({histogram}_bucket[1m])))"
