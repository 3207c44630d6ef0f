"""Benchmarks: `raiox bench` measures speed and memory on the current machine (see bench/README.md)."""
