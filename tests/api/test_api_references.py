"""The reference set over HTTP: listing, one reference with its neighbours, its image, stats, and staff changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from raiox_core.images import ImageLimits, prepare_image


def test_ingestion_answers_what_raiox_ingest_json_prints(api, seeded, make_key, demo):
    assert len(seeded["ingested"]) == 12 and seeded["duplicates"] == seeded["rejected"] == []
    assert seeded["ingested"][0] == {"id": 1, "file": demo[0][0], "manufacturer": "Nobel Biocare", "model": "REPLACE",
                                     "diameter_mm": 3.5}
    again = api.client.post("/v1/references", files=[("file", demo[0]), ("file", ("notes.png", b"not an image"))],
                            headers=make_key("staff"))
    assert again.status_code == 200, again.text
    assert again.json()["duplicates"] == [{"file": demo[0][0], "id": 1}]
    (rejected,) = again.json()["rejected"]
    assert rejected["file"] == "notes.png" and rejected["reason"].endswith(".")


def test_a_zip_and_labels_from_the_form(api, seeded, make_key, demo, tmp_path):
    import io
    import zipfile

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("scans/unnamed-1.png", demo[24][1])
    response = api.client.post("/v1/references", files=[("file", ("batch.zip", archive.getvalue(), "application/zip"))],
                               data={"manufacturer": "straumann", "model": "tl", "diameter_mm": "4.8"},
                               headers=make_key("staff"))
    assert response.status_code == 200, response.text
    (added,) = response.json()["ingested"]
    assert (added["manufacturer"], added["model"], added["diameter_mm"]) == ("Straumann", "TL", 4.8)
    bad = api.client.post("/v1/references", files=[("file", demo[25])], data={"diameter_mm": "wide"},
                          headers=make_key("staff"))
    assert bad.status_code == 422 and bad.json() == {"error": "Invalid diameter_mm: a number of millimetres, not 'wide'."}
    assert api.client.delete(f"/v1/references/{added['id']}", headers=make_key("staff")).status_code == 204


def test_listing_with_filters_and_paging(api, seeded, make_key):
    key = make_key("match")
    everything = api.client.get("/v1/references", headers=key)
    assert everything.status_code == 200 and everything.headers["X-Total-Count"] == "12"
    listed = api.client.get("/v1/references", params={"manufacturer": "Nobel Biocare", "diameter_min": 4,
                                                      "diameter_max": 5, "limit": 1, "offset": 1}, headers=key)
    assert listed.headers["X-Total-Count"] == "4"
    (one,) = listed.json()
    assert one["manufacturer"] == "Nobel Biocare" and 4 <= one["diameter_mm"] <= 5
    assert set(one) == {"id", "manufacturer", "model", "diameter_mm", "source_filename", "sha256", "source", "created_at",
                        "group_id"}
    found = api.client.get("/v1/references", params={"q": "ACTIVE_5.0", "model": "ACTIVE"}, headers=key).json()
    assert [r["source_filename"] for r in found] == ["NOBEL_ACTIVE_5.0mm_01.png"]


@pytest.mark.parametrize("params, says", [
    ({"limit": 0}, "Invalid limit: Input should be greater than or equal to 1."),
    ({"limit": "ten"}, "Invalid limit: Input should be a valid integer, unable to parse string as an integer."),
    ({"diameter_min": -1}, "Invalid diameter_min: Input should be greater than or equal to 0."),
])
def test_invalid_parameters_are_422_in_one_sentence(api, make_key, params, says):
    response = api.client.get("/v1/references", params=params, headers=make_key("match"))
    assert response.status_code == 422 and response.json() == {"error": says}


def test_one_reference_with_neighbours_and_its_image(api, seeded, make_key, demo):
    key = make_key("match")
    found = api.client.get("/v1/references/2", headers=key)
    assert found.status_code == 200, found.text
    body = found.json()
    assert body["source_filename"] == demo[1][0] and len(body["neighbours"]) == 6
    assert 2 not in [n["id"] for n in body["neighbours"]]
    assert set(body["neighbours"][0]) == {"id", "manufacturer", "model", "diameter_mm", "similarity", "source_filename"}

    image = api.client.get("/v1/references/2/image", headers=key)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == prepare_image(demo[1][1], ImageLimits()).png  # the normalised image that was stored

    for path in ("/v1/references/999999", "/v1/references/999999/image"):
        missing = api.client.get(path, headers=key)
        assert missing.status_code == 404 and missing.json() == {"error": "There is no reference with id 999999."}
    assert api.client.get("/v1/references/abc", headers=key).status_code == 422


def test_stats_answers_what_raiox_stats_json_prints(api, seeded, make_key):
    over_http = api.client.get("/v1/stats", headers=make_key("match")).json()
    cli = subprocess.run([sys.executable, "-m", "raiox_core.cli", "stats", "--json"], capture_output=True, text=True,
                         env=api.env, timeout=120)
    assert json.loads(cli.stdout) == over_http and over_http["references"] >= 12


def test_relabel_and_delete_with_a_staff_key(api, seeded, make_key, demo):
    staff = make_key("staff")
    added = api.client.post("/v1/references", files=[("file", demo[23])], headers=staff).json()["ingested"][0]
    path = f"/v1/references/{added['id']}"
    changed = api.client.patch(path, json={"manufacturer": "zimmer", "model": "tsv"}, headers=staff)
    assert changed.status_code == 200, changed.text
    assert (changed.json()["manufacturer"], changed.json()["model"], changed.json()["diameter_mm"]) == (
        "Zimmer", "TSV", added["diameter_mm"])
    for body, says in [({"diameter_mm": 12}, "A diameter of 12 mm is outside the 2-8 mm range of dental implants."),
                       ({"colour": "red"}, "Invalid colour: Extra inputs are not permitted."),
                       ({"model": ""}, "Invalid model: String should have at least 1 character.")]:
        refused = api.client.patch(path, json=body, headers=staff)
        assert refused.status_code == 422 and refused.json() == {"error": says}

    deleted = api.client.delete(path, headers=staff)
    assert deleted.status_code == 204 and deleted.content == b""
    assert api.client.get(path, headers=staff).status_code == 404
    again = api.client.delete(path, headers=staff)
    assert again.status_code == 404 and again.json() == {"error": f"There is no reference with id {added['id']}."}
    assert api.client.patch(path, json={"model": "X"}, headers=staff).status_code == 404


def test_a_huge_json_body_is_refused_without_being_read_whole(api, seeded, make_key):
    staff = make_key("staff")
    path = f"/v1/references/{seeded['ingested'][0]['id']}"
    sent = 0

    def body():  # 2 GB of JSON, chunked (no Content-Length): refused once 64 KB have come
        nonlocal sent
        yield b'{"model": "'
        for _ in range(2048):
            sent += 2**20
            yield b"A" * 2**20

    streamed = api.client.patch(path, content=body(), headers={**staff, "Content-Type": "application/json"})
    assert streamed.status_code == 413 and streamed.json() == {
        "error": "The request body is larger than 64 KB; it should be a few labels."}
    assert sent < 64 * 2**20, f"the client sent {sent:,} bytes before the refusal"
    declared = api.client.patch(path, content=b"{" + b" " * 70_000 + b"}", headers={**staff, "Content-Type": "application/json"})
    assert declared.status_code == 413
    assert api.client.get(path, headers=staff).json()["model"] == seeded["ingested"][0]["model"]


@pytest.fixture(scope="module")
def on_s3(api, s3_endpoint, s3_bucket, tmp_path_factory):
    """A second server over the same database, its images in moto's S3."""
    from tests.api.conftest import Server

    here = tmp_path_factory.mktemp("api-s3")
    aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}  # moto's, set by s3_endpoint
    env = {**api.env, **aws, "RAIOX_DATA_DIR": str(here / "data"), "RAIOX_STORAGE_URL": f"s3://{s3_bucket}/raiox",
           "RAIOX_S3_ENDPOINT_URL": s3_endpoint}
    server = Server(env, here / "server.log")
    server.wait("/readyz", 200)
    yield server
    output = server.stop()
    assert "Traceback" not in output, output


@pytest.fixture(scope="module")
def s3_bucket(s3_endpoint):
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="raiox-api-test")
    return "raiox-api-test"


def test_an_image_on_s3_is_a_redirect_to_a_presigned_url(on_s3, make_key, demo):
    staff = make_key("staff")
    added = on_s3.client.post("/v1/references", files=[("file", demo[22])], headers=staff).json()["ingested"][0]
    try:
        image = on_s3.client.get(f"/v1/references/{added['id']}/image", headers=staff)
        assert image.status_code == 307
        assert image.headers["location"].startswith("http://127.0.0.1:")  # moto's endpoint
        assert "X-Amz-Expires=300" in image.headers["location"] and "X-Amz-Signature=" in image.headers["location"]
        fetched = httpx.get(image.headers["location"])  # no key: the signature is the permission
        assert fetched.status_code == 200
        assert fetched.content == prepare_image(demo[22][1], ImageLimits()).png
    finally:
        assert on_s3.client.delete(f"/v1/references/{added['id']}", headers=staff).status_code == 204
