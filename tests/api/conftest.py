"""`raiox api` as a real process on a free port, over a database of its own on the session's embedded
PostgreSQL, driven with httpx."""

from __future__ import annotations

import subprocess
import sys
import time
from itertools import count

import httpx
import pytest

from tests.api.file_host import FileHost
from tests.envs import subprocess_env
from tests.ports import free_port

JOTFORM_API_KEY = "test-jotform-api-key"
RATE_PER_MIN = 40  # low enough for the rate-limit test to pass it quickly; every test has its own keys
MAX_UPLOAD_MB = 1  # so that a file over the limit is cheap to send


def api_env(data_dir, database_url: str, **extra: str) -> dict[str, str]:
    env = subprocess_env()
    env.update(RAIOX_DATABASE_URL=database_url, RAIOX_DATA_DIR=str(data_dir), RAIOX_PRETRAINED="none",
               RAIOX_DEVICE="cpu", HF_HUB_OFFLINE="1", RAIOX_API_RATE_PER_MIN=str(RATE_PER_MIN),
               RAIOX_MAX_UPLOAD_MB=str(MAX_UPLOAD_MB), **extra)
    return env


class Server:
    """A `raiox api` subprocess and an httpx client aimed at it."""

    def __init__(self, env: dict[str, str], log_path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "w+")
        self.process = subprocess.Popen([sys.executable, "-m", "raiox_core.cli", "api", "--port", str(self.port)],
                                        env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def wait(self, path: str, status: int, timeout_s: float = 120) -> httpx.Response:
        deadline, last = time.monotonic() + timeout_s, None
        while True:
            assert self.process.poll() is None, self.output()
            try:
                last = self.client.get(path)
                if last.status_code == status:
                    return last
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{path} never answered {status} ({last and last.text}): {self.output()}"
            time.sleep(0.1)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> str:
        self.client.close()
        self.process.terminate()
        self.process.wait(timeout=30)
        return self.output()


@pytest.fixture(scope="session")
def api_pg_url(pg_url) -> str:
    """A database of the API tests' own on the session's server. `seeded` fills it once per run for every
    file here, and other files, which empty the shared database before each test, may run between these
    (pytest-xdist hands whole files to its workers in no fixed order)."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    from raiox_core.db import migrate

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE raiox_api")
    url = urlunsplit(urlsplit(pg_url)._replace(path="/raiox_api"))
    migrate(url)
    return url


def _clear(pg_url: str) -> None:
    import psycopg

    from raiox_core.db import migrate

    migrate(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("TRUNCATE reference_implants, embeddings, match_log, api_keys, form_submissions, calibrations, adapters RESTART IDENTITY CASCADE")


@pytest.fixture(scope="session")
def file_host():
    """Jotform's file host and the result webhook's receiver, played by one local server."""
    host = FileHost()
    yield host
    host.close()


@pytest.fixture(scope="session")
def api(api_pg_url, tmp_path_factory, file_host):
    """One server for the tests of tests/api, on an emptied database, taking files from `file_host` only."""
    _clear(api_pg_url)
    here = tmp_path_factory.mktemp("api")
    env = api_env(here / "data", api_pg_url, RAIOX_JOTFORM_FILE_HOSTS=f"127.0.0.1:{file_host.port}",
                  RAIOX_JOTFORM_TIMEOUT_S="1", RAIOX_JOTFORM_API_KEY=JOTFORM_API_KEY,
                  RAIOX_RESULT_WEBHOOK_URL=f"{file_host.url}/results", RAIOX_LOG_FORMAT="json")
    server = Server(env, here / "server.log")
    server.wait("/readyz", 200)
    server.env = env
    yield server
    output = server.stop()
    assert "Traceback" not in output, output


@pytest.fixture(scope="session")
def make_key(api_pg_url):
    """make_key(scope): a fresh key of that scope (each test its own, so rate budgets never mix)."""
    from raiox_core.api_keys import create_key
    from raiox_core.db import Database

    db = Database(api_pg_url, description="test PostgreSQL")
    numbers = count()

    def make(scope: str) -> dict[str, str]:
        _, secret = create_key(db, f"test-{scope}-{next(numbers)}", scope)
        return {"X-API-Key": secret}

    yield make
    db.close()


@pytest.fixture(scope="session")
def demo():
    """26 synthetic X-rays named MANUFACTURER_MODEL_DIAMETER_NN.png, one per diameter."""
    from raiox_core.synthetic import demo_files

    return demo_files(per_diameter=1)


@pytest.fixture(scope="session")
def seeded(api, make_key, demo) -> dict:
    """The first 12 demo images ingested through POST /v1/references; its answer."""
    files = [("file", (name, data, "image/png")) for name, data in demo[:12]]
    response = api.client.post("/v1/references", files=files, headers=make_key("staff"))
    assert response.status_code == 200, response.text
    return response.json()
