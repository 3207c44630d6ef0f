"""Probes, metrics and documentation: no key needed; /v1 without a key is refused."""

from __future__ import annotations


def test_probes_answer_without_a_key(api):
    assert api.client.get("/livez").json() == {"status": "alive"}
    for path in ("/readyz", "/healthcheck"):
        ready = api.client.get(path)
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "checks": {"database": "ok", "storage": "ok", "model": "ok"}}
