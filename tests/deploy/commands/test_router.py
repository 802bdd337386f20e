"""`hap router`'s process set-up: the math libraries' thread pools limited to one thread."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PROBE = """
import json
import numpy as np
from threadpoolctl import threadpool_info
from deploy.cli import main  # what `hap` imports before it knows the subcommand
from deploy.commands import router
before = max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
router.pin_math_threads()
a = np.ones((2000, 64), np.float32) @ np.ones((64, 64), np.float32)
print(json.dumps({"before": before, "after": [p["num_threads"] for p in threadpool_info()]}))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="OpenBLAS starts one thread with one core anyway")
def test_pin_math_threads_leaves_one_blas_thread_although_numpy_loaded_first() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")} | {"PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["before"] > 1  # without the limit numpy's OpenBLAS would run a thread per core
    assert set(probe["after"]) == {1}
