"""POST /v1/match: the same JSON as `raiox match --json`, per-image refusals, and every refusal of a request."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from tests.api.conftest import MAX_UPLOAD_MB

NOT_AN_IMAGE = ("notes.jpg", b"a shopping list, not an X-ray", "image/jpeg")


def _images(*named) -> list:
    return [("image", item if len(item) == 3 else (*item, "image/png")) for item in named]


def test_match_answers_what_raiox_match_json_prints(api, seeded, make_key, demo, tmp_path):
    query, copy = demo[20], demo[3]  # one not a reference, one a reference byte for byte
    response = api.client.post("/v1/match", files=_images(query, copy, NOT_AN_IMAGE), data={"k": "4"},
                               headers=make_key("match"))
    assert response.status_code == 200, response.text
    answers = response.json()
    assert [a["file"] for a in answers] == [query[0], copy[0], "notes.jpg"]
    assert len(answers[0]["matches"]) == 4 and answers[0]["exact_reference"] is None
    assert answers[1]["exact_reference"]["source_filename"] == copy[0]
    assert set(answers[2]) == {"file", "error"} and answers[2]["error"].endswith(".")

    for name, data, *_ in (query, copy, NOT_AN_IMAGE):
        (tmp_path / name).write_bytes(data)
    cli = subprocess.run([sys.executable, "-m", "raiox_core.cli", "match", query[0], copy[0], "notes.jpg", "--k", "4",
                          "--json"], capture_output=True, text=True, env=api.env, cwd=tmp_path, timeout=300)
    assert cli.returncode == 1, cli.stderr  # one file refused
    assert json.loads(cli.stdout) == answers


def test_a_manufacturer_filter_and_a_staff_key(api, seeded, make_key, demo):
    response = api.client.post("/v1/match", files=_images(demo[20]), data={"manufacturer": "nobel", "k": "2"},
                               headers=make_key("staff"))  # staff may do everything match may
    assert response.status_code == 200, response.text
    (answer,) = response.json()
    assert answer["restricted_to"] == "Nobel Biocare"
    assert {m["manufacturer"] for m in answer["matches"]} == {"Nobel Biocare"}


@pytest.mark.parametrize("files, data, status, says", [
    ([NOT_AN_IMAGE], {}, 415, "notes.jpg: "),
    ([NOT_AN_IMAGE, ("b.png", b"\x89PNG\r\n\x1a\n broken", "image/png")], {}, 415, "None of the 2 files"),
    (["ok"], {"k": "0"}, 422, "Invalid k: a whole number from 1 to 50, not '0'."),
    (["ok"], {"k": "many"}, 422, "Invalid k"),
    (["ok"], {"colour": "red"}, 422, "Unknown form field 'colour'"),
    (["ok"], {"manufacturer": "Acme"}, 404, "No reference has the manufacturer 'Acme'"),
])
def test_a_refused_request_gets_one_sentence(api, seeded, make_key, demo, files, data, status, says):
    files = [demo[0] if f == "ok" else f for f in files]
    response = api.client.post("/v1/match", files=_images(*files), data=data, headers=make_key("match"))
    assert response.status_code == status, response.text
    assert list(response.json()) == ["error"] and says in response.json()["error"]
    assert response.json()["error"].endswith(".")


def test_a_body_that_is_not_multipart_or_holds_no_image(api, make_key):
    key = make_key("match")
    response = api.client.post("/v1/match", json={"image": "scan.png"}, headers=key)
    assert response.status_code == 400
    assert response.json() == {"error": "Send the files as multipart/form-data (curl -F image=@scan.png)."}
    response = api.client.post("/v1/match", content=b'--b\r\nContent-Disposition: form-data; name="k"\r\n\r\n3\r\n--b--\r\n',
                               headers={**key, "Content-Type": "multipart/form-data; boundary=b"})
    assert response.status_code == 400
    assert response.json() == {"error": "Send at least one file as a form part named image (curl -F image=@scan.png)."}
    response = api.client.post("/v1/match", content=b"--b\r\nnot a part at all", headers={
        **key, "Content-Type": "multipart/form-data; boundary=b"})
    assert response.status_code == 400 and response.json() == {"error": "The multipart body is malformed."}


def test_more_than_20_images_or_a_file_over_the_limit_is_413(api, make_key, demo):
    key = make_key("match")
    response = api.client.post("/v1/match", files=_images(*demo[:21]), headers=key)
    assert response.status_code == 413 and response.json() == {
        "error": "At most 20 files per request; send the others in another request."}
    big = ("big.png", b"\x89PNG\r\n\x1a\n" + bytes(MAX_UPLOAD_MB * 2**20), "image/png")
    response = api.client.post("/v1/match", files=_images(big), headers=key)
    assert response.status_code == 413
    assert response.json() == {"error": f"big.png is larger than the limit of {MAX_UPLOAD_MB} MB per file (RAIOX_MAX_UPLOAD_MB)."}


def test_a_2_gb_streamed_body_is_refused_after_reading_little_of_it(api, make_key):
    sent = 0
    chunk = b"\0" * 2**20

    def body():
        nonlocal sent
        yield (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"huge.dcm\"\r\n"
               b"Content-Type: application/dicom\r\n\r\n")
        for _ in range(2048):  # 2 GB, made as it is sent: never in this process's memory either
            sent += len(chunk)
            yield chunk

    started = time.monotonic()
    response = api.client.post("/v1/match", content=body(), headers={
        **make_key("match"), "Content-Type": "multipart/form-data; boundary=b"})  # chunked: no Content-Length
    assert response.status_code == 413 and "huge.dcm is larger than the limit" in response.json()["error"]
    assert sent < 64 * 2**20, f"the client sent {sent:,} bytes before the refusal"
    assert time.monotonic() - started < 10


def test_a_declared_2_gb_body_is_refused_before_it_is_sent(api, make_key):
    key = make_key("match")["X-API-Key"]
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as conn:
        conn.sendall(f"POST /v1/match HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n"
                     "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 2147483648\r\n\r\n".encode())
        reply = b""  # nothing of the body is sent: the server answers anyway, and closes the connection
        while chunk := conn.recv(65536):
            reply += chunk
    reply = reply.decode()
    assert reply.startswith("HTTP/1.1 413 ")
    assert '"error":"The request body of 2,147,483,648 bytes is over the limit of 20 files of 1 MB each."' in reply
