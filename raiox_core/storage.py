"""Image storage behind one small interface: a local directory or an S3 bucket."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator, Protocol
from urllib.parse import unquote, urlsplit

from .errors import ConfigError, StorageError
from .redact import redact_url

REFERENCE_PREFIX = "referencia/"
# S3's bucket rules, with the upper case and underscores of legacy us-east-1 names; never ":" or "@",
# so credentials typed into an s3:// URL cannot become part of a bucket name shown to everyone.
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}")


def reference_key(sha256: str) -> str:
    """Content-addressed key of a reference image: the same pixels always land on the same key."""
    return f"{REFERENCE_PREFIX}{sha256}.png"


class Storage(Protocol):
    """What ingestion, matching and the dashboard need from an object store."""

    description: str  # e.g. "local: /data/objects" or "s3: bucket/prefix @ endpoint"; never credentials

    def put(self, key: str, data: bytes, content_type: str = "image/png") -> None:
        """Store privately and verify integrity (size + MD5/ETag or read-back); StorageError on failure."""

    def get(self, key: str) -> bytes:
        """The stored bytes; StorageError if missing or unreachable."""

    def delete(self, key: str) -> None:
        """Remove; deleting a missing key is not an error."""

    def exists(self, key: str) -> bool: ...

    def list_keys(self, prefix: str = REFERENCE_PREFIX) -> list[str]: ...

    def last_modified(self, key: str) -> float:
        """Unix time of the object's last write (used to spare young objects of concurrent ingestions)."""

    def url(self, key: str, expires_s: int = 300) -> str | None:
        """A short-lived presigned URL (S3) or None (local: callers read the bytes)."""

    def check_writable(self) -> None:
        """Write, read back and delete a probe object; StorageError with a one-line reason otherwise."""

    def remove_stale_temporary(self, older_than_s: float) -> list[str]:
        """Remove half-written uploads of killed processes older than older_than_s; returns what was removed."""


def _md5(data: bytes):
    # An integrity checksum, not a security one: allowed on FIPS systems too.
    return hashlib.md5(data, usedforsecurity=False)


class _Missing(StorageError):
    """No object under the key (S3's exists() turns this into False)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key} not found in storage.")


class _BaseStorage:
    """Behaviour shared by both backends: key validation and the write probe."""

    description: str

    @staticmethod
    def _check_key(key: str) -> str:
        # Keys come from our own code, but a stray "../" must never escape the root or the prefix.
        parts = key.split("/")
        if not key or key.startswith("/") or "\\" in key or ".." in parts or "" in parts or "." in parts:
            raise StorageError(f"Invalid storage key {key!r}: use relative paths with forward slashes.")
        return key

    def remove_stale_temporary(self, older_than_s: float) -> list[str]:
        """Nothing to do by default: an S3 PutObject is atomic, a failed one leaves nothing behind."""
        return []

    def check_writable(self) -> None:
        """Write, read back and delete a probe object; StorageError with a one-line reason otherwise."""
        key = f".raiox-probe/{uuid.uuid4().hex}"
        data = b"raiox write probe " + key.encode()
        self.put(key, data, content_type="text/plain")
        try:
            if self.get(key) != data:
                raise StorageError(f"Storage {self.description} returned different bytes than were written.")
        finally:
            self.delete(key)


class LocalStorage(_BaseStorage):
    """Objects as files under a root directory; writes are atomic and verified."""

    _TMP_SUFFIX = ".raiox-tmp"  # half-written files carry this suffix and are never listed

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.description = f"local: {self.root}"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*self._check_key(key).split("/"))

    def put(self, key: str, data: bytes, content_type: str = "image/png") -> None:
        """Write atomically (temp file + fsync + rename), then verify size and MD5."""
        path = self._path(key)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=self._TMP_SUFFIX)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            # Verify before the rename, so a bad copy never appears under the real key.
            written = Path(tmp).read_bytes()
            if len(written) != len(data) or _md5(written).digest() != _md5(data).digest():
                raise StorageError(f"The copy of {key} written to {self.root} is corrupted.")
            os.replace(tmp, path)
            tmp = None
            _fsync_dir(path.parent)  # make the rename itself durable
        except OSError as exc:
            raise StorageError(f"Cannot write {key} under {self.root}: {exc.strerror or exc}.") from exc
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise _Missing(key) from None
        except OSError as exc:
            raise StorageError(f"Cannot read {key} under {self.root}: {exc.strerror or exc}.") from exc

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"Cannot delete {key} under {self.root}: {exc.strerror or exc}.") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_keys(self, prefix: str = REFERENCE_PREFIX) -> list[str]:
        if prefix:
            self._check_key(prefix.rstrip("/") or ".")
        # Walk only the directory the prefix names ("referencia/" -> root/referencia), not the whole root.
        start = self.root.joinpath(*prefix.split("/")[:-1])
        try:
            keys = [
                p.relative_to(self.root).as_posix()
                for p in start.rglob("*")
                if p.is_file() and not p.name.endswith(self._TMP_SUFFIX)
            ]
        except OSError as exc:
            raise StorageError(f"Cannot list {self.root}: {exc.strerror or exc}.") from exc
        return sorted(k for k in keys if k.startswith(prefix))

    def last_modified(self, key: str) -> float:
        try:
            return self._path(key).stat().st_mtime
        except FileNotFoundError:
            raise _Missing(key) from None
        except OSError as exc:
            raise StorageError(f"Cannot read {key} under {self.root}: {exc.strerror or exc}.") from exc

    def url(self, key: str, expires_s: int = 300) -> str | None:
        self._check_key(key)
        return None

    def remove_stale_temporary(self, older_than_s: float) -> list[str]:
        """Delete the temp files of puts that never finished (a SIGKILL between write and rename)."""
        removed, now = [], time.time()
        try:
            for path in self.root.rglob(f"*{self._TMP_SUFFIX}"):
                with contextlib.suppress(FileNotFoundError):  # renamed or removed meanwhile
                    if now - path.stat().st_mtime >= older_than_s:
                        path.unlink()
                        removed.append(path.relative_to(self.root).as_posix())
        except OSError as exc:
            raise StorageError(f"Cannot clean up {self.root}: {exc.strerror or exc}.") from exc
        return removed


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":  # Windows cannot open a directory for fsync; os.replace is enough there
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class S3Storage(_BaseStorage):
    """Private objects under `prefix/` in an S3 (or S3-compatible) bucket.

    Credentials come only from boto3's standard chain (environment, profile, instance role);
    this class never reads or prints them. The boto3 client is created once and is thread-safe.
    timeout_s bounds connecting and each read; max_retries transient failures are retried with
    exponential backoff and jitter before a StorageError.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        *,
        timeout_s: float = 5.0,
        max_retries: int = 5,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        # What every message and the sidebar show: an endpoint may carry user:password@ (MinIO behind a proxy).
        self._endpoint_shown = redact_url(endpoint_url) if endpoint_url else None
        where = f"{bucket}/{self.prefix}" if self.prefix else bucket
        self.description = f"s3: {where}" + (f" @ {self._endpoint_shown}" if endpoint_url else "")

        options: dict = dict(
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            # "standard": exponential backoff with jitter on throttling, 5xx and connection errors.
            # botocore's client-config max_attempts counts retries after the first try.
            retries={"max_attempts": max_retries, "mode": "standard"},
            signature_version="s3v4",
        )
        if endpoint_url:
            # S3-compatible servers (MinIO, moto, ...) are usually reached by IP or a single host name.
            options["s3"] = {"addressing_style": "path"}
        if "request_checksum_calculation" in Config.OPTION_DEFAULTS:
            # We send Content-MD5 ourselves; newer botocore's extra CRC headers break some S3-compatible servers.
            options["request_checksum_calculation"] = "when_required"
            options["response_checksum_validation"] = "when_required"
        # A private session: boto3's default session is not safe to create clients from in many threads.
        try:
            self._client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=Config(**options))
        except ValueError:
            raise ConfigError(f"RAIOX_S3_ENDPOINT_URL {self._endpoint_shown!r} is not a valid http(s) URL.") from None

    def _full(self, key: str) -> str:
        self._check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextlib.contextmanager
    def _errors(self, action: str, key: str | None = None) -> Iterator[None]:
        """Turn botocore exceptions into one readable sentence (no credentials, no traceback)."""
        from botocore import exceptions as bx

        try:
            yield
        except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError, bx.ConnectionClosedError) as exc:
            if self.endpoint_url:
                msg = f"Cannot reach the S3 endpoint {self._endpoint_shown}; check RAIOX_S3_ENDPOINT_URL and the network."
            else:
                msg = f"Cannot reach S3 for bucket {self.bucket}; check the network."
            raise StorageError(msg) from exc
        except (bx.NoCredentialsError, bx.PartialCredentialsError) as exc:
            raise StorageError(
                f"No usable S3 credentials for bucket {self.bucket}; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY or an AWS profile."
            ) from exc
        except bx.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "NotFound", "404") and key is not None:
                raise _Missing(key) from exc
            if code == "NoSuchBucket":
                msg = f"The S3 bucket {self.bucket} does not exist" + (f" at {self._endpoint_shown}." if self.endpoint_url else ".")
            elif code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
                msg = f"S3 rejected the credentials for bucket {self.bucket}; check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
            elif code in ("AccessDenied", "403") or status == 403:
                msg = f"Access to the S3 bucket {self.bucket} was denied; check the credentials' permissions."
            else:
                msg = f"S3 could not {action} in bucket {self.bucket} ({code or status})."
            raise StorageError(msg) from exc
        except bx.BotoCoreError as exc:
            raise StorageError(f"S3 could not {action} in bucket {self.bucket} ({type(exc).__name__}).") from exc

    def put(self, key: str, data: bytes, content_type: str = "image/png") -> None:
        """Upload privately with Content-MD5 (server-checked), then compare the returned ETag."""
        md5 = _md5(data)
        with self._errors(f"store {key}"):
            # No ACL argument: objects inherit the bucket's private default.
            response = self._client.put_object(
                Bucket=self.bucket,
                Key=self._full(key),
                Body=data,
                ContentType=content_type,
                ContentMD5=base64.b64encode(md5.digest()).decode("ascii"),
            )
        # A single-part ETag is the hex MD5, except under SSE-KMS/SSE-C where Content-MD5 alone must do.
        if response.get("ServerSideEncryption", "AES256") == "AES256" and not response.get("SSECustomerAlgorithm"):
            if response.get("ETag", "").strip('"') != md5.hexdigest():
                # Some S3-compatible servers ignore Content-MD5: never leave a corrupted copy behind.
                with contextlib.suppress(StorageError):
                    self.delete(key)
                raise StorageError(f"S3 stored a different checksum for {key} in bucket {self.bucket}; the upload was corrupted.")

    def get(self, key: str) -> bytes:
        with self._errors(f"read {key}", key):
            return self._client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read()

    def delete(self, key: str) -> None:
        with self._errors(f"delete {key}"):
            self._client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def _head(self, key: str) -> dict:
        with self._errors(f"read {key}", key):
            return self._client.head_object(Bucket=self.bucket, Key=self._full(key))

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except _Missing:
            return False
        return True

    def list_keys(self, prefix: str = REFERENCE_PREFIX) -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        keys: list[str] = []
        with self._errors("list objects"):
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base + prefix):
                keys.extend(obj["Key"][len(base):] for obj in page.get("Contents", []))
        return sorted(keys)

    def last_modified(self, key: str) -> float:
        return self._head(key)["LastModified"].timestamp()

    def url(self, key: str, expires_s: int = 300) -> str | None:
        """A presigned GET URL valid for expires_s seconds (signed locally, no network call)."""
        with self._errors(f"sign a URL for {key}"):
            return self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._full(key)}, ExpiresIn=int(expires_s)
            )


def open_storage(settings) -> Storage:
    """Build the backend named by settings.effective_storage_url (file:// or s3://bucket/prefix)."""
    url = settings.effective_storage_url
    shown = redact_url(url)  # the only form of the URL any message quotes
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"RAIOX_STORAGE_URL {shown!r} must be file:///absolute/path (no host).")
        root = Path(unquote(parts.path))
        if os.name == "nt" and parts.path[:1] == "/" and parts.path[2:3] == ":":
            root = Path(unquote(parts.path[1:]))  # file:///C:/x -> C:/x
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"Cannot create the storage directory {root}: {exc.strerror or exc}.") from exc
        return LocalStorage(root)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigError(f"RAIOX_STORAGE_URL {shown!r} names no bucket; use s3://bucket/optional/prefix.")
        if not _BUCKET.fullmatch(parts.netloc):
            raise ConfigError(f"RAIOX_STORAGE_URL {shown!r} names no valid bucket; use s3://bucket/optional/prefix "
                              "with credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, never in the URL.")
        return S3Storage(parts.netloc, parts.path.strip("/"), endpoint_url=settings.s3_endpoint_url)
    raise ConfigError(f"RAIOX_STORAGE_URL must start with file:// or s3://, not {shown!r}.")
