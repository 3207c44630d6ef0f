"""Run a bench probe module in a fresh Python process and read back its one-line JSON answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_probe(module: str, args: list[str], env: dict[str, str], timeout_s: float) -> tuple[float, dict]:
    """(wall seconds of the whole process, its JSON) ; raises with the probe's stderr tail on failure."""
    full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout_s)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"{module} exited {done.returncode}: {tail}")
    return wall, json.loads(done.stdout.strip().splitlines()[-1])
