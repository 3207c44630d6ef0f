"""Result file names tell hosts apart that share a CPU model name but not a vector unit."""

import pytest

from bench import machine


@pytest.mark.parametrize(("flags", "slug"), [
    (["avx2", "avx512_vnni", "avx512f", "fma"], "amd-epyc-avx512vnni-2c-24gb"),
    (["avx2", "avx512f", "fma"], "amd-epyc-avx512-2c-24gb"),
    (["avx2", "fma"], "amd-epyc-avx2-2c-24gb"),
    ([], "amd-epyc-2c-24gb"),
])
def test_slug_names_the_widest_vector_unit(monkeypatch, flags, slug):
    monkeypatch.setattr(machine, "_cpuinfo_model", lambda: "AMD EPYC")
    monkeypatch.setattr(machine, "_cpu_flags", lambda: flags)
    monkeypatch.setattr(machine, "_ram_gb", lambda: 23.5)
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 2)
    described = machine.describe_machine()
    assert described["slug"] == slug
    assert described["cpu_flags"] == flags
