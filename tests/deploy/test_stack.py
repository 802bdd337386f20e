"""`hap stack up|status|down` as a user runs it: real processes, nothing left behind."""

import json
import os

from .conftest import hap, pids


def test_up_status_down_leaves_nothing(cli_env):
    assert hap(cli_env, "stack", "up").returncode == 0
    status = json.loads(hap(cli_env, "stack", "status", "--json").stdout)
    assert status["kafka"]["healthy"] and status["redis"]["healthy"] and status["prometheus"]["healthy"]
    assert status["kafka"]["bootstrap"] == f"127.0.0.1:{cli_env['HAP_KAFKA_PORT']}"
    assert status["redis"]["url"] == f"redis://127.0.0.1:{cli_env['HAP_REDIS_PORT']}/0"
    assert status["prometheus"]["url"] == f"http://127.0.0.1:{cli_env['HAP_PROMETHEUS_PORT']}"
    assert all(status[name][f"{name}.{key}"] == status[name][key]  # the dotted keys, kept one release
               for name, key in (("kafka", "bootstrap"), ("redis", "url"), ("prometheus", "url")))
    assert len(pids(cli_env["HAP_DATA_DIR"])) == 3
    down = hap(cli_env, "stack", "down")
    assert "prometheus, redis, kafka" in down.stdout
    assert pids(cli_env["HAP_DATA_DIR"]) == []


def test_status_reports_a_dead_service(cli_env):
    assert hap(cli_env, "stack", "up", "--no-prometheus").returncode == 0
    redis_pid = int(open(os.path.join(cli_env["HAP_DATA_DIR"], "redis", "redis.pid")).read())
    os.kill(redis_pid, 9)
    status = hap(cli_env, "stack", "status", "--json", "--no-prometheus")
    assert status.returncode == 1
    report = json.loads(status.stdout)
    assert report["redis"]["healthy"] is False and report["kafka"]["healthy"] is True
    hap(cli_env, "stack", "down", "--no-prometheus")
    assert pids(cli_env["HAP_DATA_DIR"]) == []


def test_taken_port_is_a_one_line_error(cli_env):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", int(cli_env["HAP_REDIS_PORT"])))
        sock.listen()
        cli_env["HAP_KAFKA_BOOTSTRAP"] = "127.0.0.1:1"  # external: only Redis would start
        out = hap(cli_env, "stack", "up", "--no-prometheus")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"hap: port {cli_env['HAP_REDIS_PORT']} for redis is taken; set HAP_REDIS_PORT to a free port"
    )
