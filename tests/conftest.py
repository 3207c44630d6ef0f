"""Shared fixtures for real services: embedded PostgreSQL + pgvector, moto's S3 server, untrained model."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Two test workers share the cores (pytest-xdist, addopts): one torch thread each, and their subprocesses
# too, instead of each spinning as many threads as there are cores (a 2-core run then slowed several-fold).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# Tests never reach a model hub: untrained, seeded weights unless a test says otherwise.
os.environ["RAIOX_PRETRAINED"] = "none"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# No dashboard of the run (AppTest's or a browser test's) starts the ~40 s background numba warm-up beside
# the tests: on two cores it competed with them, and a browser test timed out in two CI runs.
# tests/core/test_numba_warmup.py starts it itself; a first map in a test compiles into the shared numba
# cache as it would without the warm-up.
os.environ["RAIOX_NUMBA_WARMUP"] = "off"
# One cache of what model loads remember (the int8 check's verdict) for the whole run, its subprocesses
# included (tests/envs.py passes it on): each test keeps its own data dir, without paying the ~5 s check.
if not os.environ.get("RAIOX_CACHE_DIR"):
    os.environ["RAIOX_CACHE_DIR"] = tempfile.mkdtemp(prefix="raiox-test-cache-")
    atexit.register(shutil.rmtree, os.environ["RAIOX_CACHE_DIR"], ignore_errors=True)

from raiox_core.config import Settings  # noqa: E402
from raiox_core import process  # noqa: E402

process.configure()  # the test run is an entry point, like `raiox` and the dashboard
from tests.ports import free_port  # noqa: E402


@pytest.fixture(scope="session")
def port_factory():
    """free_port, for fixtures of any scope that start a server."""
    return free_port


@pytest.fixture(scope="session")
def pg_url() -> str:
    """One embedded PostgreSQL 16 + pgvector for the whole run, in a throw-away directory.

    Not under pytest's tmp dir: that one is private to root, and pgserver runs postgres as its own user.
    """
    from raiox_core.embedded_pg import postgres_server_class

    postgres_server_class()  # imports pgserver as Raiox does, without the XDG_RUNTIME_DIR warning
    import pgserver

    server = pgserver.get_server(tempfile.mkdtemp(prefix="raiox-test-pg-"), cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 API served over real HTTP on 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing-secret")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


_bucket_counter = iter(range(10**6))


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A fresh, empty bucket per test."""
    import boto3

    name = f"raiox-test-{next(_bucket_counter)}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Local storage in a temp dir, untrained weights, no database URL (tests add pg_url)."""
    return Settings(data_dir=tmp_path / "data", pretrained="none", device="cpu")


@pytest.fixture
def s3_settings(settings, s3_endpoint, s3_bucket) -> Settings:
    return settings.with_(storage_url=f"s3://{s3_bucket}/raiox", s3_endpoint_url=s3_endpoint)


@pytest.fixture(scope="session")
def _database(pg_url):
    from raiox_core.db import Database, migrate

    migrate(pg_url)
    database = Database(pg_url, description="test PostgreSQL")
    yield database
    database.close()


@pytest.fixture
def db(_database):
    """The session's database, emptied before each test."""
    with _database.connection() as conn:
        conn.execute("TRUNCATE reference_implants, embeddings, match_log, staff_sign_in_failures, form_submissions,"
                     " calibrations, search_tuning, adapters RESTART IDENTITY CASCADE")
    _database.forget_tuning()
    return _database


@pytest.fixture(scope="session")
def age_index():
    """age_index(url, embedding_model): rebuild the model's index with pgvector's default parameters (m 16,
    ef_construction 64), as an index built by an older Raiox has it."""
    import psycopg

    def age(url: str, embedding_model: str) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            (name,) = conn.execute("SELECT indexname FROM pg_indexes WHERE indexdef LIKE %s",
                                   (f"%'{embedding_model}'%",)).fetchone()
            conn.execute(f'ALTER INDEX "{name}" RESET (m, ef_construction)')
            conn.execute(f'REINDEX INDEX "{name}"')

    return age


@pytest.fixture(scope="session")
def embedder():
    """Untrained ViT-B-32, seeded: loaded once per test run, like the app's cached model."""
    from raiox_core.embedder import load_embedder

    return load_embedder("ViT-B-32", "none", "cpu")


@pytest.fixture
def db_settings(settings, pg_url) -> Settings:
    return settings.with_(database_url=pg_url)
