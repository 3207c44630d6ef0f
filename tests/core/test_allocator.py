import os
import subprocess
import sys

import pytest

# 20 allocations of 40 MB, each written to (bytes, not numpy, which asks for huge pages): glibc maps
# blocks that size afresh and faults all their pages in (~10,000 each) unless keep_freed_memory() ran.
SCRIPT = """
import resource, sys
from raiox_core.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
block = b"x" * (40 << 20)
del block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    block = b"x" * (40 << 20)
    del block
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str, **env) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], env={**clean, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_without_page_faults():
    applied, kept = faults("keep")
    default = faults("default")[1]
    assert applied == "True"
    assert default > 20 * 5000  # each block faulted in afresh ...
    assert kept < 1000  # ... against once for the whole loop


def test_malloc_tuned_by_the_user_is_left_alone():
    applied, _ = faults("keep", MALLOC_TRIM_THRESHOLD_="1048576")
    assert applied == "False"
