"""Secrets never in argv, and a child process gets only the secrets it needs: `hap dashboards push`
refuses a token flag and reads HAP_GRAFANA_TOKEN; the stack's servers get no secret; each
component gets those of the services it talks to."""

import os
import time

from deploy.pipeline import Component
from deploy.settings import Settings
from deploy.stack.process import ManagedProcess

from .conftest import hap
from .dashboards.test_push import FakeGrafana, grafana  # noqa: F401  (the fixture)

SECRETS = {"HAP_KAFKA_SASL_PASSWORD": "k-pw-71", "HAP_REDIS_PASSWORD": "r-pw-72", "HAP_GRAFANA_TOKEN": "good"}


def test_dashboards_push_takes_the_token_from_the_environment_only(cli_env, grafana):  # noqa: F811
    flag = hap(cli_env, "dashboards", "push", "--url", grafana, "--token", "good")
    assert flag.returncode == 2 and "HAP_GRAFANA_TOKEN" in flag.stderr and "good" not in flag.stderr
    assert FakeGrafana.calls == []  # refused before anything was sent
    pushed = hap({**cli_env, "HAP_GRAFANA_TOKEN": "good", "HAP_GRAFANA_URL": grafana}, "dashboards", "push",
                 "--prometheus-url", "http://prom:9090")
    assert pushed.returncode == 0, pushed.stderr
    assert "provisioned 4 dashboards" in pushed.stdout and "good" not in pushed.stdout + pushed.stderr
    settings = Settings.load({"HAP_GRAFANA_TOKEN": "good", "HAP_DATA_DIR": str(cli_env["HAP_DATA_DIR"])})
    assert settings.grafana_token == "good" and "good" not in repr(settings)


def test_stack_servers_get_no_secret_and_components_only_theirs(monkeypatch, tmp_path):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    server = ManagedProcess("envdump", tmp_path / "envdump")
    server.start(["/usr/bin/env"])
    deadline = time.monotonic() + 10
    while server.pid() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    dumped = server.log_file.read_text()
    assert "PATH=" in dumped and not [v for v in SECRETS.values() if v in dumped]
    needs = {"streams": {"HAP_KAFKA_SASL_PASSWORD", "HAP_REDIS_PASSWORD"},
             "learner": {"HAP_KAFKA_SASL_PASSWORD", "HAP_REDIS_PASSWORD"}, "router": {"HAP_REDIS_PASSWORD"},
             "simulate": {"HAP_KAFKA_SASL_PASSWORD"}}
    for command, secrets in needs.items():
        env = Component(command, [command, "--help"], tmp_path).env
        assert {k for k in SECRETS if k in env} == secrets, command
        assert env["PATH"] == os.environ["PATH"]
