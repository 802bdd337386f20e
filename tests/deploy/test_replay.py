"""`hap replay` on a small MIND-layout log (empty categories) through the real stack, in log time:
every request gets a group, the learner trains them all, the exposed GAUC it publishes live agrees
with what `hap eval`'s trainer measures over the same groups, and the features the live pipeline
gave each exposed item are those `hap eval` reads as of the request, so the live `ctr` counter
scores what `hap eval`'s does (with the wall clock's stamps it scored 0.5: no window had closed)."""

import json
import os
import subprocess
import sys

import pytest

from deploy.stack.process import free_port
from feature_store.featurize import FEATURES

from ..mind_log import write_mind_log

REQUESTS = 300  # 30 s apart: 2.5 hours of log, sent in a few seconds


def test_live_replay_in_log_time_reports_the_quality_and_features_hap_eval_measures(stack_env, tmp_path):
    log = write_mind_log(tmp_path / "log", requests=REQUESTS)
    env = {**os.environ, **stack_env, "HAP_PROMETHEUS_PORT": str(free_port()), "PYTHONUNBUFFERED": "1"}
    report_path = tmp_path / "replay" / "report.json"
    done = subprocess.run([sys.executable, "-m", "deploy.cli", "replay", "--dataset", str(log), "--requests", "1000",
                           "--rate", "2000", "--candidates", "60", "--window", "3", "--lateness", "1", "--blocks", "5",
                           "--timeout", "240", "--report", str(report_path)],
                          env=env, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["clock"] == "log" and report["log_shift_ms"] % 3_600_000 == 0
    assert report["coverage"]["requests_sent"] == REQUESTS and report["coverage"]["fraction"] == 1.0
    live = report["live"]["quality"]
    assert {"light", "expressive_all", "damr@0.05", "damr@0.5"} <= set(live)
    emitted = sum(report["samples"]["by_source"].values())  # copies the streams redelivered are not trained twice
    assert 0.99 * emitted <= report["learner"]["samples_trained"] <= emitted
    assert report["freshness_s"]["p50"] is not None  # the router served a version trained on them
    on_live = report["offline"]["live_groups"]
    # the counter is computed by the same code on the same groups: identical
    assert report["live"]["ctr"]["gauc"] == on_live["ctr"]["gauc"]
    light = report["agreement"]["live_vs_offline_live_groups"]["light"]
    assert light["within"], light
    # log time: every feature of every exposed item is what hap eval reads as of its request ...
    equal = report["offline"]["features_equal"]
    assert equal["items"] > 5 * REQUESTS
    assert all(equal["by_feature"][f] == 1.0 for f in FEATURES), equal
    assert report["offline"]["exposed_with_stats"]["live"] == report["offline"]["exposed_with_stats"]["eval"] > 0.3
    # ... so the live ctr counter scores hap eval's ctr on the same requests, and the windows carry signal
    assert report["live"]["ctr"]["gauc"] == pytest.approx(report["offline"]["eval"]["ctr"]["gauc"], abs=1e-6)
    assert report["live"]["ctr"]["gauc"] > 0.55
    assert "coverage:" in done.stdout and "replay:" in done.stderr  # the summary, and progress lines (no tty)
