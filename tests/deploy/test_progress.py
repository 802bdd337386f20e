"""Progress when output is not a terminal (logs, CI): periodic plain lines, never a bar redrawn per
update; `hap simulate` prints them."""

import io
import subprocess
import sys

from deploy.progress import Progress


def test_plain_lines_at_most_every_interval_and_the_end_once():
    out = io.StringIO()
    with Progress(1000, "job", "s", stream=out, every_s=3600) as p:
        for i in range(1, 1001):
            p.advance_to(min(i, 1000), f"at {i}")
        p.advance_to(1000, "again")  # a time-based job reports its end more than once
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[0]]
    assert out.getvalue().startswith("job: 1000/1000 s (at 1000), ")
    stopped = io.StringIO()
    with Progress(10, "job", "req", stream=stopped, every_s=3600) as p:
        p.update()
    assert stopped.getvalue().startswith("job: 1/10 req, ")  # where an unfinished job ended


def test_simulate_prints_plain_lines_when_not_a_terminal(tmp_path):
    run = subprocess.run([sys.executable, "-m", "deploy.cli", "simulate", "--out", str(tmp_path / "ev"), "--requests",
                          "400", "--rate", "0", "--candidates", "50", "--items", "300"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("simulate: ")]
    assert "\r" not in run.stderr and "|" not in run.stderr  # no bar redrawn in a log
    assert 1 <= len(lines) <= 5 and lines[-1].startswith("simulate: 400/400 requests")
