"""What this CPU is, as far as the encoder's speed and int8 results depend on it: model name and vector units."""

from __future__ import annotations

import platform
import re
from pathlib import Path

# Widest first: the first flag present names the machine's vector unit (the bench's result file names).
ISA_TAGS = (("amx_tile", "amx"), ("avx512_vnni", "avx512vnni"), ("avx512f", "avx512"), ("avx_vnni", "avxvnni"),
            ("avx2", "avx2"))
# What is reported (bench, int8 check's cache key): the vector units above, plus fused multiply-add.
REPORTED_FLAGS = ("fma", *(flag for flag, _ in ISA_TAGS))


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def model_name() -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) Processor"), or the platform's best guess."""
    found = re.search(r"^model name\s*:\s*(.+)$", _cpuinfo(), flags=re.M)
    return found.group(1).strip() if found else (platform.processor() or platform.machine())


def vector_flags() -> list[str]:
    """The REPORTED_FLAGS this CPU has, sorted (empty where /proc/cpuinfo cannot be read)."""
    found = re.search(r"^flags\s*:\s*(.+)$", _cpuinfo(), flags=re.M)
    flags = set(found.group(1).split()) if found else set()
    return sorted(f for f in REPORTED_FLAGS if f in flags)
