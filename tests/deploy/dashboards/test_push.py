"""Pushing with grafana-client against a recording double of Grafana's HTTP API (no Grafana server
can be installed here): idempotent, clear errors for bad credentials and an unreachable server."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deploy.dashboards.alerts import ALERTS
from deploy.dashboards.push import DashboardPushError, push
from deploy.stack.process import free_port


class FakeGrafana(BaseHTTPRequestHandler):
    store: dict[str, dict] = {}
    calls: list[tuple[str, str]] = []

    def _answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        self.calls.append((self.command, self.path))
        if self.headers.get("Authorization") != "Bearer good":
            return self._answer(401, {"message": "invalid API key"})
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        if self.command == "GET":
            return self._answer(200, self.store[self.path]) if self.path in self.store \
                else self._answer(404, {"message": "not found"})
        key = {"/api/folders": "/api/folders/{uid}", "/api/datasources": "/api/datasources/uid/{uid}",
               "/api/v1/provisioning/alert-rules": "/api/v1/provisioning/alert-rules/{uid}"}.get(self.path)
        if key:
            self.store[key.format(uid=body["uid"])] = body
        return self._answer(200, {"status": "success", **(body or {})})

    do_GET = do_POST = do_PUT = _handle

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def grafana():
    FakeGrafana.store, FakeGrafana.calls = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), FakeGrafana)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_push_is_idempotent(grafana):
    assert push(grafana, "good", "http://prom:9090") == {"dashboards": 4, "alert_rules": len(ALERTS)}
    creates = [c for c in FakeGrafana.calls if c[0] == "POST" and "dashboards" not in c[1]]
    FakeGrafana.calls.clear()
    push(grafana, "good", "http://prom:9090")
    assert len(creates) == 2 + len(ALERTS)  # folder, data source, the alert rules
    assert not [c for c in FakeGrafana.calls if c[0] == "POST" and "dashboards" not in c[1]]  # second: updates only
    assert sum(c == ("POST", "/api/dashboards/db") for c in FakeGrafana.calls) == 4


def test_bad_credentials_and_unreachable_server_are_clear_errors(grafana):
    with pytest.raises(DashboardPushError, match="bad credentials"):
        push(grafana, "wrong", "http://prom:9090")
    with pytest.raises(DashboardPushError, match="unreachable"):
        push(f"http://127.0.0.1:{free_port()}", "good", "http://prom:9090", timeout_s=2)
