"""The match queue through the real server: concurrent requests share encoder calls; a full queue answers 503."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import Server, api_env


@pytest.fixture(scope="module")
def tiny_queue(api_pg_url, tmp_path_factory):
    """A second server that holds one match request at a time. Started, not awaited: it loads its model
    while the first test runs (a server start is most of this module's time)."""
    here = tmp_path_factory.mktemp("tiny-queue")
    server = Server(api_env(here / "data", api_pg_url, RAIOX_MATCH_QUEUE="1"), here / "server.log")
    yield server
    output = server.stop()
    assert "Traceback" not in output, output


def _batches(server: Server) -> tuple[float, float]:
    """(encoder calls, calls of more than one image) so far, from /metrics."""
    text = server.client.get("/metrics").text
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "raiox_match_batch_size"]
    values = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    calls = values[("raiox_match_batch_size_count", None)]
    return calls, calls - values[("raiox_match_batch_size_bucket", "1.0")]


def _burst(server: Server, headers: dict, files: list, n: int) -> list[httpx.Response]:
    """n match requests sent at the same moment, each on its own connection."""
    start = threading.Barrier(n)

    def one(_):
        with httpx.Client(base_url=server.url, timeout=120) as client:
            start.wait()
            return client.post("/v1/match", files=files, headers=headers)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_concurrent_requests_share_encoder_calls(api, seeded, make_key, demo, tiny_queue):
    calls_before, shared_before = _batches(api)
    name, data = demo[20]
    responses = _burst(api, make_key("match"), [("image", (name, data, "image/png"))], 12)
    assert [r.status_code for r in responses] == [200] * 12, [r.text for r in responses if r.status_code != 200]
    answers = [r.json()[0] for r in responses]
    assert all(a == answers[0] for a in answers)  # the same image, the same answer, whatever its batch
    calls, shared = _batches(api)
    assert calls - calls_before < 12 and shared - shared_before >= 1, (calls - calls_before, shared - shared_before)


def test_a_full_queue_answers_503_with_retry_after(tiny_queue, seeded, make_key, demo):
    tiny_queue.wait("/readyz", 200)
    files = [("image", (name, data, "image/png")) for name, data in demo[20:23]]  # 3 images: a longer hold
    responses = _burst(tiny_queue, make_key("match"), files, 6)
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses and 503 in statuses, statuses
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["Retry-After"] == "1"
    assert busy.json()["error"] == "The server is busy: 1 match requests are already in progress; retry in a moment."
