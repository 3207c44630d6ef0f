"""The API is a door over the core: raiox_core never imports FastAPI (only `raiox api` loads it, lazily)."""

from __future__ import annotations

import subprocess
import sys


def test_no_core_module_imports_fastapi_or_uvicorn():
    script = ("import importlib, pkgutil, sys, raiox_core\n"
              "for m in pkgutil.iter_modules(raiox_core.__path__):\n"
              "    importlib.import_module('raiox_core.' + m.name)\n"
              "print(sorted(n for n in sys.modules if n.split('.')[0] in ('fastapi', 'uvicorn', 'starlette', 'raiox_api')))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "[]"
