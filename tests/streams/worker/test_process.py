"""`hap streams`: the worker process's set-up."""

import subprocess
import sys

PROBE = """
import logging
import os
import faust
from streams.worker.process import make_worker_class
worker = make_worker_class()(faust.App("probe", broker="kafka://127.0.0.1:1"), loglevel="WARNING", quiet=True)
worker._setup_logging()
levels = (logging.getLogger("aiokafka.producer.producer").isEnabledFor(logging.DEBUG),
          logging.getLogger("faust.topics").isEnabledFor(logging.DEBUG), logging.getLogger().level)
os.write(1, " ".join(map(str, levels)).encode())  # the worker redirects sys.stdout to its log
"""


def test_the_worker_builds_no_debug_records_below_its_log_level():
    """Faust's spinner would set the root logger to DEBUG: every debug line of aiokafka and Faust
    (several per record sent) would be built, then dropped by the handler."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split()[-3:] == ["False", "False", "30"], (out.stdout, out.stderr)
