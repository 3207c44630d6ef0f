"""Process-wide set-up belongs to the entry points: importing and using Raiox's modules changes nothing
process-wide; process.configure() (which `raiox` and the dashboard call) does it once."""

from __future__ import annotations

import subprocess
import sys

LIBRARY_USE = """
import logging, os, sys
before = logging.getLogRecordFactory()
import raiox_core.backup, raiox_core.cli, raiox_core.db, raiox_core.embedder, raiox_core.images
import raiox_core.ingest, raiox_core.match, raiox_core.projection, raiox_core.references, raiox_core.storage
from raiox_core.images import ImageLimits, prepare_image
from raiox_core.synthetic import demo_files
from raiox_core.storage import S3Storage
S3Storage("bucket", endpoint_url="http://127.0.0.1:9")
prepare_image(demo_files(per_diameter=1)[0][1], ImageLimits())
assert logging.getLogRecordFactory() is before, "a library module replaced the log record factory"
assert not [n for n, lg in logging.root.manager.loggerDict.items()
            if n.startswith("botocore") and getattr(lg, "filters", None)], "a library module filtered botocore's logs"
assert "NUMBA_CACHE_DIR" not in os.environ, "a library module set NUMBA_CACHE_DIR"
assert logging.getLogger("pydicom").propagate, "a library module silenced pydicom"

from raiox_core import process
process.configure()
assert os.environ["NUMBA_CACHE_DIR"]
record = logging.getLogger("botocore.endpoint").makeRecord(
    "botocore.endpoint", logging.DEBUG, "endpoint.py", 1, "headers %s to %s",
    ({"x-amz-security-token": "SECRET-TOKEN"}, "https://user:hunter2@s3.example"), None)
message = record.getMessage()
assert "SECRET-TOKEN" not in message and "hunter2" not in message and "***" in message, message
factory = logging.getLogRecordFactory()
process.configure()
assert logging.getLogRecordFactory() is factory, "a second configure() wrapped the factory again"
print("ok")
"""


def test_library_use_has_no_process_wide_side_effects_and_configure_has_them(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", LIBRARY_USE], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
