"""Provision Grafana with grafana-client: folder, Prometheus data source, dashboards, alert rules.

Idempotent: a second push updates what the first created (stable uids, overwrite).
"""

from __future__ import annotations

from collections.abc import Callable

import niquests
from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException, GrafanaUnauthorizedError

from deploy.dashboards.alerts import all_rules
from deploy.dashboards.definitions import all_dashboards
from deploy.dashboards.export import FOLDER_UID
from deploy.dashboards.panels import DATASOURCE


class DashboardPushError(RuntimeError):
    """Grafana refused or could not be reached; the message says which."""


def push(url: str, token: str, prometheus_url: str, timeout_s: float = 10.0) -> dict[str, int]:
    """Create or update everything; returns counts of what was provisioned."""
    api = GrafanaApi.from_url(url, credential=token, timeout=timeout_s)
    ds = {"uid": DATASOURCE["uid"], "name": "HAP Prometheus", "type": "prometheus", "access": "proxy",
          "url": prometheus_url, "isDefault": False}
    rules = all_rules(FOLDER_UID)
    try:
        _upsert(lambda: api.folder.get_folder(FOLDER_UID), None,
                lambda: api.folder.create_folder("HAP", uid=FOLDER_UID))
        _upsert(lambda: api.datasource.get_datasource_by_uid(ds["uid"]),
                lambda: api.datasource.update_datasource_by_uid(ds["uid"], ds),
                lambda: api.datasource.create_datasource(ds))
        for dash in all_dashboards():
            api.dashboard.update_dashboard({"dashboard": dash, "folderUid": FOLDER_UID, "overwrite": True})
        for r in rules:
            _upsert(lambda r=r: api.alertingprovisioning.get_alertrule(r["uid"]),
                    lambda r=r: api.alertingprovisioning.update_alertrule(r["uid"], r),
                    lambda r=r: api.alertingprovisioning.create_alertrule(r))
    except GrafanaUnauthorizedError:
        raise DashboardPushError(f"bad credentials for {url}") from None
    except GrafanaClientError as exc:
        if exc.status_code == 403:
            raise DashboardPushError(f"bad credentials for {url} (forbidden)") from None
        raise DashboardPushError(f"Grafana at {url} refused the request: {exc.message}") from None
    except (niquests.ConnectionError, niquests.Timeout):
        raise DashboardPushError(f"Grafana unreachable at {url}") from None
    except GrafanaException as exc:
        raise DashboardPushError(f"Grafana at {url} failed: {exc.message}") from None
    return {"dashboards": len(all_dashboards()), "alert_rules": len(rules)}


def _upsert(get: Callable[[], object], update: Callable[[], object] | None, create: Callable[[], object]) -> None:
    """Update what exists (``update=None``: leave it), create what Grafana answers 404 for."""
    try:
        get()
    except GrafanaClientError as exc:
        if exc.status_code != 404:
            raise
        create()
        return
    if update is not None:
        update()
