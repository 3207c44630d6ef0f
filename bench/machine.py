"""What the figures were measured on: hardware, library versions and the settings that matter for speed."""

from __future__ import annotations

import os
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

from raiox_core import cpu as cpu_facts

# The CPU's facts are raiox_core's (the int8 check's cache is keyed on them too); the names stay for the tests.
_cpuinfo_model, _cpu_flags, _ISA_TAGS = cpu_facts.model_name, cpu_facts.vector_flags, cpu_facts.ISA_TAGS


def _ram_gb() -> float | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    found = re.search(r"^MemTotal:\s*(\d+) kB", text, flags=re.M)
    return round(int(found.group(1)) / 1024**2, 1) if found else None


def _gpu() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except Exception:  # no torch or a broken driver: report no GPU rather than fail the bench
        pass
    return None


def describe_machine() -> dict:
    """CPU model, cores, RAM, GPU, OS; `slug` names the result files."""
    cpu = _cpuinfo_model()
    cores = os.cpu_count() or 1
    ram = _ram_gb()
    flags = _cpu_flags()
    # The same model name ("AMD EPYC" on a VM) can hide AVX2-only or AVX-512 VNNI hosts, whose int8
    # figures differ by 2x: the widest vector unit is part of the name.
    isa = next((tag for flag, tag in _ISA_TAGS if flag in flags), "")
    name = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-")[:24]
    slug = f"{name}{'-' + isa if isa else ''}-{cores}c-{round(ram or 0)}gb"
    return {
        "cpu": cpu, "cores": cores, "cpu_flags": flags, "ram_gb": ram, "gpu": _gpu() or "none",
        "os": f"{platform.system()} {platform.release()}", "hypervisor": _hypervisor(), "slug": slug,
    }


def _hypervisor() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return "yes" if re.search(r"^flags\s*:.*\bhypervisor\b", text, flags=re.M) else "no"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def library_versions() -> dict:
    """Python and the libraries on the hot paths (the database's own versions are added by the caller)."""
    versions = {"python": sys.version.split()[0]}
    for name in ("torch", "open_clip_torch", "numpy", "pillow", "psycopg", "pgvector", "pgserver", "umap-learn",
                 "numba", "scikit-learn", "streamlit", "onnxruntime"):
        versions[name] = _version(name)
    return versions


def database_facts(conn) -> dict:
    """Server version, pgvector version and the settings that change index builds and scans."""
    facts = {
        "postgres": conn.execute("SHOW server_version").fetchone()[0],
        "pgvector": conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0],
    }
    for name in ("shared_buffers", "work_mem", "maintenance_work_mem", "max_parallel_maintenance_workers",
                 "max_parallel_workers_per_gather", "synchronous_commit", "fsync"):
        facts[name] = conn.execute(f"SHOW {name}").fetchone()[0]
    return facts
