"""The Jotform webhook end to end: a Jotform-shaped multipart POST, the upload downloaded from a local file
host, the submission stored and its result posted on; refusals, redelivery and keys."""

from __future__ import annotations

import json
import time
from itertools import count

import psycopg
import pytest

from tests.api.conftest import JOTFORM_API_KEY
from tests.api.file_host import PERSONAL, jotform_fields

FORM_ID = "231234567890123"
_ids = count(5862346891234567000)


def submission_id() -> str:
    return str(next(_ids))


def post_webhook(api, key: str, fields: dict[str, str]):
    # Jotform sends multipart/form-data without files: the uploads are URLs inside rawRequest.
    return api.client.post(f"/v1/webhooks/jotform/{key}", files=[(name, (None, value)) for name, value in fields.items()])


def webhook_key(make_key) -> str:
    return make_key("webhook")["X-API-Key"]


def wait_finished(api, headers, sid: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        body = api.client.get(f"/v1/submissions/{sid}", headers=headers).json()
        if body["status"] != "pending":
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


def wait_delivered(file_host, sid: str, attempts: int, timeout_s: float = 30) -> list:
    deadline = time.monotonic() + timeout_s
    while len(file_host.results[sid]) < attempts:
        assert time.monotonic() < deadline, file_host.results[sid]
        time.sleep(0.1)
    return file_host.results[sid]


def test_a_submission_is_matched_like_post_v1_match_and_keeps_nothing_personal(api, seeded, make_key, demo, file_host, api_pg_url):
    name, data = demo[20]  # not a reference (the seeded ones are the first 12)
    url = file_host.add(f"{submission_id()}/{name}", data)
    sid = submission_id()
    key = webhook_key(make_key)
    accepted = post_webhook(api, key, jotform_fields(FORM_ID, sid, {"q5_xray": [url]}))
    assert accepted.status_code == 202, accepted.text
    assert accepted.json() == {"submission_id": sid, "status": "pending", "status_url": f"/v1/submissions/{sid}"}

    reader = make_key("match")
    finished = wait_finished(api, reader, sid)
    assert finished["status"] == "done", finished
    assert finished["error"] is None and finished["form_id"] == FORM_ID
    direct = api.client.post("/v1/match", files=[("image", (name, data, "image/png"))], headers=reader).json()
    (result,) = finished["results"]
    assert result["file"] == "q5_xray"  # the question, never the file's name
    assert {**result, "file": name} == direct[0]
    assert file_host.headers[url.split("/files/")[1]]["APIKEY"] == JOTFORM_API_KEY

    (status, posted), = wait_delivered(file_host, sid, 1)
    assert status == 200 and posted == finished

    stored = psycopg.connect(api_pg_url).execute(
        "SELECT row_to_json(s)::text FROM form_submissions s WHERE submission_id = %s", (sid,)).fetchone()[0]
    logged = api.output()
    for personal in PERSONAL:
        assert personal not in stored and personal not in logged
    assert key[3:] not in logged and "/v1/webhooks/jotform/{key} 202" in logged
    # RAIOX_LOG_FORMAT=json: one object per line; the match is logged by its ids, under the webhook request's id.
    lines = [json.loads(line) for line in logged.splitlines()[1:]]
    (line,) = [e for e in lines if sid in e["message"]]
    assert FORM_ID in line["message"] and line["request_id"] == accepted.headers["x-request-id"]


def test_a_redelivered_submission_is_matched_once(api, seeded, make_key, demo, file_host):
    name, data = demo[21]
    path = f"{submission_id()}/{name}"
    url = file_host.add(path, data)
    key, sid = webhook_key(make_key), submission_id()
    fields = jotform_fields(FORM_ID, sid, {"q5_xray": [url]})
    assert post_webhook(api, key, fields).status_code == 202
    first = wait_finished(api, make_key("match"), sid)
    again = post_webhook(api, key, fields)
    assert again.status_code == 202 and again.json()["status"] == "done"
    assert wait_finished(api, make_key("match"), sid) == first
    assert file_host.downloads[path] == 1


def test_refused_files_fail_with_a_reason(api, seeded, make_key, file_host):
    """An unlisted host (another loopback address), a redirect to it, a non-image and a host too slow."""
    unlisted = f"http://127.0.0.2:{file_host.port}/files/anything.png"
    cases = {
        "unlisted host": (unlisted, "127.0.0.2 is not an allowed file host"),
        "redirect": (f"{file_host.url}/redirect?to={unlisted}", "127.0.0.2 is not an allowed file host"),
        "not an image": (file_host.add(f"{submission_id()}/notes.png", b"Patient notes, not an X-ray.\n", "text/plain"),
                         "not an image"),
        "slow host": (f"{file_host.url}/slow", "did not deliver the file within 1 s"),
    }
    key, reader = webhook_key(make_key), make_key("match")
    sent = {}
    for case, (url, _) in cases.items():
        sid = submission_id()
        assert post_webhook(api, key, jotform_fields(FORM_ID, sid, {"q9_upload": [url]})).status_code == 202
        sent[case] = sid
    for case, (_, reason) in cases.items():
        finished = wait_finished(api, reader, sent[case])
        assert finished["status"] == "failed", (case, finished)
        assert finished["error"].startswith("q9_upload: ") and reason in finished["error"], (case, finished["error"])


def test_a_submission_without_an_upload_fails(api, make_key):
    sid = submission_id()
    assert post_webhook(api, webhook_key(make_key), jotform_fields(FORM_ID, sid, {})).status_code == 202
    finished = wait_finished(api, make_key("match"), sid)
    assert finished == {**finished, "status": "failed", "error": "The submission has no uploaded file to match."}


def test_the_result_is_posted_again_after_failures(api, seeded, make_key, demo, file_host):
    name, data = demo[22]
    url = file_host.add(f"{submission_id()}/{name}", data)
    sid = submission_id()
    file_host.fail_first[sid] = 2
    assert post_webhook(api, webhook_key(make_key), jotform_fields(FORM_ID, sid, {"q5_xray": [url]})).status_code == 202
    attempts = wait_delivered(file_host, sid, 3)
    assert [status for status, _ in attempts] == [500, 500, 200]
    assert attempts[-1][1]["status"] == "done"


@pytest.mark.parametrize("scope, status", [(None, 401), ("match", 403), ("staff", 403)])
def test_the_webhook_needs_a_webhook_key(api, make_key, scope, status):
    key = "rx_not-a-key" if scope is None else make_key(scope)["X-API-Key"]
    response = post_webhook(api, key, jotform_fields(FORM_ID, submission_id(), {}))
    assert response.status_code == status
    assert key not in response.text and "webhook" in response.json()["error"]


def test_malformed_webhooks_are_refused(api, make_key):
    key = webhook_key(make_key)
    without_id = {k: v for k, v in jotform_fields(FORM_ID, submission_id(), {}).items() if k != "submissionID"}
    assert post_webhook(api, key, without_id).status_code == 422
    not_json = {**jotform_fields(FORM_ID, submission_id(), {}), "rawRequest": "{not json"}
    assert post_webhook(api, key, not_json).json() == {"error": "The webhook's rawRequest is missing or not JSON."}
    assert api.client.post(f"/v1/webhooks/jotform/{key}", data={"formID": FORM_ID}).status_code == 400


def test_submissions_need_a_match_key_and_say_when_unknown(api, make_key):
    assert api.client.get("/v1/submissions/123").status_code == 401
    assert api.client.get("/v1/submissions/123", headers=make_key("webhook")).status_code == 403
    missing = api.client.get("/v1/submissions/123", headers=make_key("match"))
    assert missing.status_code == 404 and missing.json() == {"error": "There is no submission '123'."}


def test_the_webhook_is_documented(api):
    spec = api.client.get("/openapi.json").json()
    post = spec["paths"]["/v1/webhooks/jotform/{key}"]["post"]
    assert {"202", "401", "403", "422", "503"} <= set(post["responses"])
    assert json.dumps(spec["paths"]["/v1/submissions/{submission_id}"]["get"]["responses"]["200"]).count("done")
