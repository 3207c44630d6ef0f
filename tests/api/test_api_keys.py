"""Keys: `raiox keys` creates, lists and revokes them; scopes and the per-key rate on every /v1 endpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.api.conftest import RATE_PER_MIN


def _raiox(api, *args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "raiox_core.cli", *args], capture_output=True, text=True,
                          env=api.env, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_create_list_revoke_with_the_cli(api):
    created = _raiox(api, "keys", "create", "clinic-a", "--scope", "match", "--json")
    assert created.returncode == 0, created.stderr
    shown = json.loads(created.stdout)
    assert set(shown) == {"name", "scope", "key"} and shown["name"] == "clinic-a" and shown["scope"] == "match"
    key = {"X-API-Key": shown["key"]}
    assert api.client.get("/v1/stats", headers=key).status_code == 200

    again = _raiox(api, "keys", "create", "clinic-a", "--scope", "staff")
    assert again.returncode == 1 and again.stderr.strip() == (
        "raiox: A key named 'clinic-a' exists; revoke it first (`raiox keys revoke clinic-a`) or choose another name.")
    listed = _raiox(api, "keys", "list", "--json")
    (entry,) = [k for k in json.loads(listed.stdout) if k["name"] == "clinic-a"]
    assert entry["scope"] == "match" and entry["revoked_at"] is None
    assert shown["key"] not in listed.stdout and shown["key"] not in _raiox(api, "keys", "list").stdout

    assert _raiox(api, "keys", "revoke", "clinic-a").stdout.strip() == "revoked clinic-a"
    assert api.client.get("/v1/stats", headers=key).status_code == 401
    (entry,) = [k for k in json.loads(_raiox(api, "keys", "list", "--json").stdout) if k["name"] == "clinic-a"]
    assert entry["revoked_at"] is not None
    gone = _raiox(api, "keys", "revoke", "clinic-a")
    assert gone.returncode == 1 and gone.stderr.strip() == "raiox: There is no active key named 'clinic-a'."
    human = _raiox(api, "keys", "create", "clinic-a", "--scope", "staff")  # the name can be reissued
    assert human.returncode == 0 and human.stdout.strip().startswith("rx_") and "shown only now" in human.stderr


READS = [("GET", "/v1/stats"), ("GET", "/v1/references"), ("GET", "/v1/references/1"),
         ("GET", "/v1/references/1/image"), ("POST", "/v1/match")]
WRITES = [("POST", "/v1/references"), ("PATCH", "/v1/references/1"), ("DELETE", "/v1/references/1")]


@pytest.mark.parametrize("method, path", READS + WRITES)
def test_every_v1_endpoint_needs_a_valid_key(api, method, path):
    missing = api.client.request(method, path)
    assert missing.status_code == 401 and missing.json() == {
        "error": "This endpoint needs an API key in the X-API-Key header (`raiox keys create`)."}
    wrong = api.client.request(method, path, headers={"X-API-Key": "rx_not-a-key-anyone-made"})
    assert wrong.status_code == 401 and wrong.json() == {"error": "Send a valid API key in the X-API-Key header."}


@pytest.mark.parametrize("method, path", READS + WRITES)
def test_a_webhook_key_opens_no_v1_endpoint(api, make_key, method, path):
    response = api.client.request(method, path, headers=make_key("webhook"))
    assert response.status_code == 403
    needed = "match or staff" if (method, path) in READS else "staff"
    assert response.json() == {"error": f"This key's scope is webhook; this endpoint needs {needed}."}


@pytest.mark.parametrize("method, path", WRITES)
def test_a_match_key_cannot_change_references(api, make_key, method, path):
    response = api.client.request(method, path, headers=make_key("match"))
    assert response.status_code == 403
    assert response.json() == {"error": "This key's scope is match; this endpoint needs staff."}


def test_the_rate_limit_is_per_key_with_retry_after(api, make_key):
    key, other = make_key("match"), make_key("match")
    answers = [api.client.get("/v1/stats", headers=key).status_code for _ in range(RATE_PER_MIN)]
    assert answers == [200] * RATE_PER_MIN
    limited = api.client.get("/v1/stats", headers=key)
    assert limited.status_code == 429
    assert limited.json() == {"error": f"More than {RATE_PER_MIN} requests in a minute with this key; retry after "
                                       "the Retry-After seconds."}
    assert 1 <= int(limited.headers["Retry-After"]) <= 60 / RATE_PER_MIN + 1
    assert api.client.get("/v1/stats", headers=other).status_code == 200  # another key has its own budget
