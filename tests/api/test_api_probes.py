"""Probes, metrics and documentation need no key; a server whose database is down says so with 503."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import Server, api_env
from tests.ports import free_port


def test_probes_answer_without_a_key(api):
    assert api.client.get("/livez").json() == {"status": "alive"}
    for path in ("/readyz", "/healthcheck"):
        ready = api.client.get(path)
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "checks": {"database": "ok", "storage": "ok", "model": "ok"}}


def test_unknown_paths_and_methods_are_json_errors(api):
    assert api.client.get("/upload").json() == {"error": "There is no such endpoint; see /docs."}
    refused = api.client.put("/v1/stats")
    assert refused.status_code == 405 and refused.json() == {"error": "This endpoint does not take that method; see /docs."}


def test_metrics_in_prometheus_format(api, seeded, make_key, demo):
    key = make_key("match")
    assert api.client.post("/v1/match", files=[("image", demo[13])], headers=key).status_code == 200
    assert api.client.get("/v1/references/999999", headers=key).status_code == 404
    text = api.client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = {(s.labels["route"], s.labels["status"]): s.value for s in families["raiox_requests"].samples
                if s.name == "raiox_requests_total"}
    assert requests[("/v1/match", "200")] >= 1 and requests[("/v1/references/{reference_id}", "404")] >= 1
    assert not any("999999" in route for route, _ in requests)  # route templates, never raw paths
    durations = {s.labels["route"] for s in families["raiox_request_duration_seconds"].samples}
    assert "/v1/match" in durations
    stages = {s.labels["stage"]: s.value for s in families["raiox_match_stage_seconds"].samples
              if s.name == "raiox_match_stage_seconds_count"}
    assert set(stages) == {"decode", "embed", "search", "vote", "log"} and min(stages.values()) >= 1
    buckets = [s.labels["le"] for s in families["raiox_match_stage_seconds"].samples if s.name.endswith("_bucket")]
    assert "0.005" in buckets and "60.0" in buckets
    (references,) = families["raiox_references"].samples
    assert references.value >= 12
    (model,) = families["raiox_model_info"].samples
    assert model.labels["model_id"] == "ViT-B-32/untrained" and model.labels["trained"] == "false" and model.value == 1
    assert model.labels["precision"] in ("int8", "fp32")
    ingested = {s.labels["result"]: s.value for s in families["raiox_ingest_images"].samples if s.name.endswith("_total")}
    assert ingested["ingested"] >= 12


def _shows_success(status: str, answer: dict) -> bool:
    """A 2xx answer documented with an example, or one that has no JSON to show (204, 307, a PNG)."""
    if status in ("204", "307"):
        return True
    content = answer.get("content", {})
    return "image/png" in content or any(kind.get("example") is not None for kind in content.values())


def test_openapi_documents_every_endpoint_and_error_with_an_example(api):
    assert api.client.get("/docs").status_code == 200
    spec = api.client.get("/openapi.json").json()
    operations = [(path, method, op) for path, ops in spec["paths"].items() for method, op in ops.items()]
    assert {(p, m) for p, m, _ in operations} >= {
        ("/v1/match", "post"), ("/v1/references", "get"), ("/v1/references", "post"),
        ("/v1/references/{reference_id}", "get"), ("/v1/references/{reference_id}", "patch"),
        ("/v1/references/{reference_id}", "delete"), ("/v1/references/{reference_id}/image", "get"),
        ("/v1/stats", "get"), ("/livez", "get"), ("/readyz", "get"), ("/healthcheck", "get"), ("/metrics", "get"),
        ("/v1/webhooks/jotform/{key}", "post"), ("/v1/submissions/{submission_id}", "get")}
    for path, method, op in operations:
        for status, answer in op["responses"].items():
            if status.startswith(("4", "5")):
                example = answer["content"]["application/json"]["example"]
                assert set(example) >= {"error"}, (path, method, status)
        if path.startswith("/v1/"):
            assert {"401", "403", "429", "503"} <= set(op["responses"]), (path, method)
            # The webhook's key is its URL's secret (a form tool cannot send a header).
            assert op.get("security") == (None if "{key}" in path else [{"APIKeyHeader": []}]), path
        assert any(_shows_success(status, answer) for status, answer in op["responses"].items()), (path, method)
    assert "422" in spec["paths"]["/v1/match"]["post"]["responses"]
    schema = spec["paths"]["/v1/match"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(schema["properties"]) == {"image", "k", "manufacturer"}


@pytest.fixture(scope="module")
def no_database(tmp_path_factory):
    """A server whose database does not answer (a port nothing listens on)."""
    here = tmp_path_factory.mktemp("api-down")
    server = Server(api_env(here / "data", f"postgresql://raiox@127.0.0.1:{free_port()}/raiox",
                            RAIOX_DB_TIMEOUT_S="1"), here / "server.log")
    server.wait("/livez", 200)
    yield server
    output = server.stop()
    assert "Traceback" not in output, output


def test_not_ready_is_503_with_retry_after(no_database):
    ready = no_database.wait("/readyz", 503)
    assert ready.headers["Retry-After"] == "5"
    assert ready.json()["error"].startswith("Not ready: database: Cannot reach the database at postgresql://raiox@127.0.0.1:")
    assert ready.json()["checks"]["database"].startswith("Cannot reach the database")
    assert no_database.client.get("/healthcheck").status_code == 503
    refused = no_database.client.get("/v1/stats", headers={"X-API-Key": "rx_any"})
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    assert refused.json()["error"].startswith("Cannot reach the database")
    assert no_database.client.get("/livez").status_code == 200
