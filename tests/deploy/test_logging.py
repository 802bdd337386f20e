"""Every `hap` command logs at the level of the settings' ``log_level`` and in the format of their
``log_format``: text lines that carry the level, or one JSON object per line (time, level, logger,
message, exception). The router and the learner are run as a user runs them (no Kafka or Redis
needed: each logs that it cannot reach them); the streams worker's Faust logging through the
configuration the worker hands Faust."""

import io
import json
import logging
import logging.config
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy.logging_config import LoggingSettingError, checked, dict_config, json_formatter, text_formatter
from deploy.pipeline import Component
from deploy.settings import env_name
from deploy.stack.process import free_port

LEVEL, FORMAT = env_name("log_level"), env_name("log_format")


def parsed(stderr: str) -> list[dict]:
    """Every line of ``stderr`` as a JSON object with the fields every record carries (fails on any other line)."""
    lines = [json.loads(line) for line in stderr.splitlines()]
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
    return lines


def environment(tmp_path: Path, **settings: str) -> dict[str, str]:
    """A `hap` environment of its own: nothing listens at its Redis and Kafka ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAP_") or k == "HAP_CACHE_DIR"}
    dead = str(free_port())
    env.update({"HAP_DATA_DIR": str(tmp_path / "data"), "HAP_REDIS_PORT": dead, "HAP_KAFKA_PORT": dead,
                "HAP_ROUTER_PORT": str(free_port()), "HAP_LEARNER_METRICS_PORT": str(free_port())})
    env.update({name: value for name, value in settings.items()})
    return env


def run_until(command: list[str], env: dict[str, str], wanted: str, timeout_s: float = 60) -> str:
    """Run ``hap command`` until its standard error contains ``wanted`` (or ``timeout_s``), then
    SIGTERM it; its standard error."""
    err = io.BytesIO()
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", *command], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    os.set_blocking(proc.stderr.fileno(), False)
    deadline = time.monotonic() + timeout_s
    try:
        while wanted not in err.getvalue().decode() and time.monotonic() < deadline and proc.poll() is None:
            err.write(proc.stderr.read() or b"")
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(30)
        err.write(proc.stderr.read() or b"")
    return err.getvalue().decode()


def test_a_json_record_has_time_level_logger_message_and_the_exception():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("hap.learner", logging.ERROR, __file__, 1, "step %d failed", (7,), sys.exc_info())
    line = json.loads(json_formatter().format(record))
    assert (line["level"], line["logger"], line["message"]) == ("ERROR", "hap.learner", "step 7 failed")
    assert line["exception"].startswith("Traceback") and "RuntimeError: boom" in line["exception"]
    assert line["time"].endswith("+00:00")
    text = text_formatter().format(record)
    assert " ERROR hap.learner step 7 failed\nTraceback" in text


def test_the_configuration_logs_at_its_level_in_its_format():
    stream, root = io.StringIO(), logging.getLogger()
    before = root.level, root.handlers[:]
    logging.config.dictConfig(dict_config("warning", "json", stream))
    try:
        logging.getLogger("hap.x").info("hidden")
        logging.getLogger("faust.x").warning("shown %s", "here")
    finally:
        root.setLevel(before[0])
        root.handlers[:] = before[1]
    assert [(r["level"], r["logger"], r["message"]) for r in parsed(stream.getvalue())] == [
        ("WARNING", "faust.x", "shown here")]


def test_an_unknown_level_or_format_is_refused_naming_the_setting(tmp_path):
    with pytest.raises(LoggingSettingError) as bad:
        checked("INFO", "logfmt")
    assert bad.value.field == "log_format" and bad.value.allowed == ("text", "json")
    out = subprocess.run([sys.executable, "-m", "deploy.cli", "models", "list"], capture_output=True, text=True,
                         env=environment(tmp_path, **{LEVEL: "LOUD"}), timeout=60)
    assert out.returncode == 2 and out.stderr.startswith(f"hap: {LEVEL}: 'LOUD' is not one of DEBUG"), out.stderr


def test_the_router_logs_json_lines_at_the_level_set(tmp_path):
    err = run_until(["router", "--drain", "0"], environment(tmp_path, **{LEVEL: "DEBUG", FORMAT: "json"}),
                    "model store unreachable")
    lines = parsed(err)
    assert any(r["level"] == "WARNING" and r["logger"] == "hap.router" and "model store unreachable" in r["message"]
               for r in lines), err
    assert any(r["level"] == "DEBUG" for r in lines), err  # DEBUG honoured (it used to be INFO, always)


def test_the_router_logs_text_with_the_level_and_nothing_below_it(tmp_path):
    shown = run_until(["router", "--drain", "0"], environment(tmp_path, **{LEVEL: "WARNING"}),
                      "model store unreachable")
    first = next(line for line in shown.splitlines() if "model store unreachable" in line)
    assert first.split(" ")[2:4] == ["WARNING", "hap.router"], first  # date time LEVEL logger message
    quiet = run_until(["router", "--drain", "0"], environment(tmp_path, **{LEVEL: "ERROR"}), "never", timeout_s=3)
    assert "model store unreachable" not in quiet and "WARNING" not in quiet, quiet


def test_the_learner_logs_json_lines(tmp_path):
    err = run_until(["learner"], environment(tmp_path, **{FORMAT: "json"}), "waiting to start", timeout_s=90)
    lines = parsed(err)
    assert [(r["level"], r["logger"]) for r in lines if "waiting to start" in r["message"]] == [
        ("WARNING", "hap.learner")], err


def test_simulate_progress_lines_are_json_objects_too(tmp_path):
    out = subprocess.run([sys.executable, "-m", "deploy.cli", "simulate", "--out", str(tmp_path / "ev"), "--requests",
                          "50", "--rate", "0", "--candidates", "20", "--items", "100"], capture_output=True, text=True,
                         env=environment(tmp_path, **{FORMAT: "json"}), timeout=120)
    assert out.returncode == 0, out.stderr
    lines = parsed(out.stderr)
    assert lines and lines[-1]["logger"] == "hap.simulate" and lines[-1]["message"].startswith("simulate: 50/50")
    assert json.loads(out.stdout)["requests"] == 50  # the command's own output stays on stdout


FAUST_PROBE = """
import logging
import logging.config
import sys
import faust
from deploy.logging_config import dict_config
from streams.worker.process import make_worker_class
worker = make_worker_class()(faust.App("probe", broker="kafka://127.0.0.1:1"), loglevel=sys.argv[1],
                             logging_config=dict_config(sys.argv[1], "json"), quiet=True)
worker._setup_logging()
logging.getLogger("faust.probe").info("faust says %s", "hi")
logging.getLogger("aiokafka").warning("broker gone")
print("a stray print")  # Faust sends standard output to its log
"""


@pytest.mark.parametrize("level", ["INFO", "ERROR"])
def test_the_streams_worker_hands_faust_the_same_level_and_format(level):
    out = subprocess.run([sys.executable, "-c", FAUST_PROBE, level], capture_output=True, text=True, timeout=60,
                         check=True)
    lines = [(r["level"], r["logger"], r["message"]) for r in parsed(out.stderr)]
    if level == "ERROR":
        assert lines == []
    else:
        assert ("INFO", "faust.probe", "faust says hi") in lines and ("WARNING", "aiokafka", "broker gone") in lines
        assert any(message == "a stray print" for _, _, message in lines), lines


def test_an_uncaught_exception_is_one_json_record():
    code = ("from deploy.logging_config import configure\n"
            "configure('INFO', 'json')\n"
            "raise KeyError('missing')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    [line] = parsed(out.stderr)
    assert line["level"] == "CRITICAL" and "KeyError: 'missing'" in line["exception"]


def test_a_streams_worker_on_kafka_writes_only_json_lines(stack_env, tmp_path):
    """The real worker and its supervisor, Faust's and aiokafka's records included, at INFO."""
    url = f"http://127.0.0.1:{stack_env['HAP_STREAMS_METRICS_PORT']}/metrics"
    worker = Component("streams", ["streams"], tmp_path, {**stack_env, LEVEL: "INFO", FORMAT: "json"}).start()
    try:
        worker.wait_http(url)
        deadline = time.monotonic() + 30
        while "Ready" not in worker.log_file.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        worker.stop()
    lines = parsed(worker.log_file.read_text())
    loggers = {r["logger"].split(".")[0] for r in lines if r["level"] == "INFO"}
    assert {"faust", "aiokafka"} <= loggers, worker.log_tail()
    assert any(r["message"].endswith("Ready") for r in lines), worker.log_tail()
