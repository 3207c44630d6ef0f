"""Storage backends: a local directory and S3 (moto's server over real HTTP), through open_storage."""

from __future__ import annotations

import base64
import hashlib
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import EndpointConnectionError

from raiox_core.errors import ConfigError, StorageError
from raiox_core.storage import REFERENCE_PREFIX, LocalStorage, S3Storage, open_storage, reference_key
from tests.ports import free_port

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


@pytest.fixture(params=["local", "s3"])
def storage(request):
    """The same tests run against both backends, built the way the app builds them."""
    settings = request.getfixturevalue("s3_settings" if request.param == "s3" else "settings")
    return open_storage(settings)


@pytest.fixture
def s3(s3_settings) -> S3Storage:
    storage = open_storage(s3_settings)
    assert isinstance(storage, S3Storage)
    return storage


def raw_client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint)


# --- behaviour shared by both backends ---------------------------------------------------------


def test_round_trip(storage):
    key = reference_key("ab" * 32)
    assert not storage.exists(key)
    storage.put(key, PNG)
    assert storage.exists(key)
    assert storage.get(key) == PNG
    assert abs(storage.last_modified(key) - time.time()) < 60
    storage.put(key, b"replaced")  # overwriting is allowed (same key, new bytes)
    assert storage.get(key) == b"replaced"
    storage.delete(key)
    assert not storage.exists(key)


def test_list_keys_sorted_and_filtered(storage):
    for key in ["referencia/b.png", "referencia/a.png", "other/c.png", "referencia/sub/d.png"]:
        storage.put(key, b"x")
    assert storage.list_keys() == ["referencia/a.png", "referencia/b.png", "referencia/sub/d.png"]
    assert storage.list_keys("other/") == ["other/c.png"]
    assert storage.list_keys("") == sorted(["referencia/b.png", "referencia/a.png", "other/c.png", "referencia/sub/d.png"])
    assert storage.list_keys("missing/") == []


def test_delete_missing_is_ok(storage):
    storage.delete("referencia/never-written.png")


def test_get_missing_raises(storage):
    with pytest.raises(StorageError, match="not found in storage"):
        storage.get("referencia/never-written.png")
    with pytest.raises(StorageError, match="not found in storage"):
        storage.last_modified("referencia/never-written.png")


@pytest.mark.parametrize("key", ["../escape.png", "referencia/../../escape.png", "/etc/passwd", "a\\b.png", "", "a//b"])
def test_bad_keys_rejected(storage, key):
    for call in (lambda: storage.put(key, b"x"), lambda: storage.get(key), lambda: storage.exists(key), lambda: storage.delete(key)):
        with pytest.raises(StorageError, match="Invalid storage key"):
            call()


def test_check_writable_leaves_nothing_behind(storage):
    storage.check_writable()
    assert storage.list_keys("") == []


def test_concurrent_gets(storage):
    keys = [f"referencia/{i}.png" for i in range(8)]
    for i, key in enumerate(keys):
        storage.put(key, PNG + bytes([i]))
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(storage.get, keys * 4))
    assert results == [PNG + bytes([i]) for i in range(8)] * 4


def test_description_has_no_secret(storage):
    assert storage.description.startswith(("local: ", "s3: "))
    assert os.environ.get("AWS_SECRET_ACCESS_KEY", "testing-secret") not in storage.description


# --- local backend ---------------------------------------------------------------------------


def test_local_layout_and_url(settings):
    storage = open_storage(settings)
    assert isinstance(storage, LocalStorage)
    root = (settings.data_dir / "objects").resolve()
    assert root.is_dir()  # open_storage creates the directory
    assert storage.description == f"local: {root}"
    storage.put("referencia/x.png", PNG)
    assert (root / "referencia" / "x.png").read_bytes() == PNG
    assert storage.url("referencia/x.png") is None


def test_local_put_is_atomic(settings, monkeypatch):
    storage = open_storage(settings)
    storage.put("referencia/x.png", b"old")

    def crash(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(StorageError, match="No space left on device"):
        storage.put("referencia/x.png", b"new")
    monkeypatch.undo()
    # The old object is intact and no temp file is left (nor listed).
    assert storage.get("referencia/x.png") == b"old"
    assert [p.name for p in (storage.root / "referencia").iterdir()] == ["x.png"]
    assert storage.list_keys() == ["referencia/x.png"]


def test_open_storage_file_url(tmp_path, settings):
    storage = open_storage(settings.with_(storage_url=(tmp_path / "elsewhere").as_uri()))
    assert storage.description == f"local: {(tmp_path / 'elsewhere').resolve()}"


# --- S3 backend ------------------------------------------------------------------------------


def test_s3_keys_live_under_prefix(s3, s3_endpoint, s3_bucket):
    assert s3.description == f"s3: {s3_bucket}/raiox @ {s3_endpoint}"
    s3.put("referencia/x.png", PNG)
    listed = raw_client(s3_endpoint).list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["raiox/referencia/x.png"]


def test_s3_empty_prefix(s3_settings, s3_endpoint, s3_bucket):
    storage = open_storage(s3_settings.with_(storage_url=f"s3://{s3_bucket}"))
    assert storage.description == f"s3: {s3_bucket} @ {s3_endpoint}"
    storage.put("referencia/x.png", PNG)
    assert raw_client(s3_endpoint).get_object(Bucket=s3_bucket, Key="referencia/x.png")["Body"].read() == PNG
    assert storage.list_keys() == ["referencia/x.png"]


def test_s3_objects_are_private(s3, s3_endpoint, s3_bucket):
    s3.put("referencia/x.png", PNG)
    grants = raw_client(s3_endpoint).get_object_acl(Bucket=s3_bucket, Key="raiox/referencia/x.png")["Grants"]
    assert not [g for g in grants if "AllUsers" in g["Grantee"].get("URI", "")]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{s3_endpoint}/{s3_bucket}/raiox/referencia/x.png", timeout=10)
    assert refused.value.code == 403


def test_s3_presigned_url(s3):
    s3.put("referencia/x.png", PNG)
    url = s3.url("referencia/x.png", expires_s=1)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == PNG
    # moto 5 does not enforce presigned expiry, so we only check the URL carries it.
    assert "X-Amz-Expires=1&" in url


def test_s3_put_sends_content_md5_and_checks_etag(s3):
    sent = {}
    s3._client.meta.events.register("before-send.s3.PutObject", lambda request, **kw: sent.update(request.headers))
    s3.put("referencia/x.png", PNG)
    assert sent["Content-MD5"].decode() == base64.b64encode(hashlib.md5(PNG).digest()).decode()

    def corrupt_etag(parsed, **kw):
        parsed["ETag"] = '"00000000000000000000000000000000"'

    s3._client.meta.events.register("after-call.s3.PutObject", corrupt_etag)
    with pytest.raises(StorageError, match="different checksum"):
        s3.put("referencia/y.png", PNG)


def test_s3_corruption_in_transit_is_caught(s3):
    # Corrupt the body after Content-MD5 was computed. Real S3 refuses it (BadDigest); moto ignores
    # Content-MD5 and stores it, so our ETag check must catch it and remove the bad copy.
    def tamper(request, **kw):
        body = request.body.read()
        request.body = b"X" + body[1:]

    s3._client.meta.events.register("before-send.s3.PutObject", tamper)
    with pytest.raises(StorageError, match="different checksum"):
        s3.put("referencia/x.png", PNG)
    s3._client.meta.events.unregister("before-send.s3.PutObject", tamper)
    assert not s3.exists("referencia/x.png")


class _Raw:
    """Just enough of urllib3's response for botocore to parse an error body."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **kw):
        yield self.body


@pytest.mark.parametrize("failure", ["connection", "503"])
def test_s3_transient_failure_is_retried(s3, failure):
    attempts = []

    def fail_once(request, **kw):
        attempts.append(1)
        if len(attempts) > 1:
            return None  # let the real request through
        if failure == "connection":
            raise EndpointConnectionError(endpoint_url=request.url)
        body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
        return AWSResponse(request.url, 503, {}, _Raw(body))

    s3._client.meta.events.register("before-send.s3.PutObject", fail_once)
    s3.put("referencia/x.png", PNG)
    assert len(attempts) == 2
    assert s3.get("referencia/x.png") == PNG


def test_s3_unreachable_endpoint_is_quick_and_secret_free(s3_settings, monkeypatch):
    secret = "SUPER-SECRET-do-not-print-42"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    endpoint = f"http://127.0.0.1:{free_port()}"
    # Few attempts keep the test fast; the default (5, with backoff) is exercised by open_storage below.
    storage = S3Storage("raiox-nowhere", "p", endpoint_url=endpoint, timeout_s=2, max_retries=1)
    for call in (storage.check_writable, lambda: storage.get("a"), lambda: storage.exists("a"), storage.list_keys):
        start = time.monotonic()
        with pytest.raises(StorageError) as err:
            call()
        assert time.monotonic() - start < 15
        message = str(err.value)
        assert message == f"Cannot reach the S3 endpoint {endpoint}; check RAIOX_S3_ENDPOINT_URL and the network."
        assert secret not in message and "Traceback" not in message

    start = time.monotonic()
    with pytest.raises(StorageError, match="Cannot reach the S3 endpoint"):
        open_storage(s3_settings.with_(s3_endpoint_url=endpoint)).get("a")
    assert time.monotonic() - start < 20


def test_s3_missing_bucket(s3_settings):
    storage = open_storage(s3_settings.with_(storage_url="s3://raiox-no-such-bucket/p"))
    for call in (storage.check_writable, storage.list_keys, lambda: storage.get("a")):
        with pytest.raises(StorageError, match="raiox-no-such-bucket does not exist"):
            call()


# --- open_storage ----------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://x", "s3:///only-a-prefix", "file://somehost/x", "data"])
def test_open_storage_rejects_bad_urls(settings, url):
    with pytest.raises(ConfigError):
        open_storage(settings.with_(storage_url=url))


def test_open_storage_rejects_bad_endpoint(s3_settings):
    with pytest.raises(ConfigError, match="RAIOX_S3_ENDPOINT_URL"):
        open_storage(s3_settings.with_(s3_endpoint_url="not a url"))


def test_reference_key():
    assert reference_key("ff" * 32) == f"{REFERENCE_PREFIX}{'ff' * 32}.png"


# --- credentials in URLs ------------------------------------------------------------------------


def test_credentials_in_urls_are_never_shown(s3_settings, s3_endpoint):
    password = "proxy-Pa55-6Wd"
    host = s3_endpoint.removeprefix("http://")
    storage = open_storage(s3_settings.with_(s3_endpoint_url=f"http://minio:{password}@{host}"))
    assert storage.description.endswith(f" @ http://***@{host}")  # what the sidebar and `raiox doctor` show
    storage.check_writable()  # the endpoint as given still reaches the server

    nowhere = S3Storage("raiox-nowhere", endpoint_url=f"http://minio:{password}@127.0.0.1:{free_port()}",
                        timeout_s=1, max_retries=0)
    with pytest.raises(StorageError) as unreachable:
        nowhere.get("a")
    messages = [str(unreachable.value)]
    for bad in ({"storage_url": f"s3://AKIA:{password}@bucket/p"}, {"storage_url": f"file://u:{password}@host/x"},
                {"storage_url": f"ftp://u:{password}@x"}, {"s3_endpoint_url": f"http://u:{password}@[::1"}):
        with pytest.raises(ConfigError) as refused:
            open_storage(s3_settings.with_(**bad))
        messages.append(str(refused.value))
    assert messages[0] == "Cannot reach the S3 endpoint http://***@127.0.0.1:" + messages[0].split("127.0.0.1:")[1]
    assert "names no valid bucket" in messages[1]  # never a bucket named "AKIA:...@bucket"
    for message in messages:
        assert password not in message and "***@" in message, message
    assert password not in repr(s3_settings.with_(s3_endpoint_url=f"http://minio:{password}@{host}"))
