"""Access: private S3 objects, short-lived URLs, no secret in any output or log, user text kept as text."""

from __future__ import annotations

import json
import logging
import subprocess
import time
import urllib.error
import urllib.request
from urllib.parse import parse_qs, urlsplit

import pytest

from raiox_core import cli as raiox_cli
from raiox_core.config import Settings
from raiox_core.errors import StorageError
from raiox_core.images import ImageLimits
from raiox_core.ingest import Source, ingest
from raiox_core.storage import REFERENCE_PREFIX, open_storage
from tests.ports import free_port
from tests.reliability.conftest import labelled_pngs, raiox_command

DB_PASSWORD = "Db-Pa55word-7Qx"
AWS_SECRET = "aws/Secret+Key-9Zk"
AWS_TOKEN = "aws-Session-Token-3Vb"
STAFF_PASSWORD = "staff-Pa55-4Hm"
ENDPOINT_PASSWORD = "proxy-Pa55-6Wd"  # a user:password@ in RAIOX_S3_ENDPOINT_URL (an S3 server behind a proxy)
SECRETS = (DB_PASSWORD, AWS_SECRET, AWS_TOKEN, STAFF_PASSWORD, ENDPOINT_PASSWORD)
SCRIPT = "<script>alert(1)</script>"
IMG_NAME = "<img src=x onerror=alert(1)>.png"


def test_ingested_s3_objects_are_private_and_urls_short_lived(db, embedder, s3_settings, s3_endpoint, s3_bucket):
    import boto3

    storage = open_storage(s3_settings)
    sent: list[dict] = []
    storage._client.meta.events.register("before-send.s3.PutObject", lambda request, **kw: sent.append(dict(request.headers)))
    report = ingest([Source.from_bytes(n, d) for n, d in labelled_pngs(2)], db=db, storage=storage, embedder=embedder, limits=ImageLimits())
    assert len(report.ingested) == 2 and len(sent) == 2
    assert not [h for h in sent if any(k.lower() == "x-amz-acl" for k in h)]  # never asks for a public ACL

    raw = boto3.client("s3", endpoint_url=s3_endpoint)
    for key in storage.list_keys(REFERENCE_PREFIX):
        grants = raw.get_object_acl(Bucket=s3_bucket, Key=f"raiox/{key}")["Grants"]
        assert not [g for g in grants if g["Grantee"].get("URI", "").endswith(("AllUsers", "AuthenticatedUsers"))]
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            urllib.request.urlopen(f"{s3_endpoint}/{s3_bucket}/raiox/{key}", timeout=10)
        assert anonymous.value.code == 403

        url = storage.url(key)  # the default the dashboard uses
        query = parse_qs(urlsplit(url).query)
        assert 0 < int(query["X-Amz-Expires"][0]) <= 900  # minutes, not days
        signed_at = time.mktime(time.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")) - time.timezone
        assert abs(signed_at - time.time()) < 120
        assert AWS_SECRET not in url and "testing-secret" not in url
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.read() == storage.get(key)
    for bad in ("../outside.png", "/etc/passwd", "referencia/../../x.png"):
        with pytest.raises(StorageError, match="Invalid storage key"):
            storage.url(bad)


@pytest.fixture
def secret_env(monkeypatch, tmp_path, pg_url, s3_endpoint, s3_bucket, embedder, db):
    """The CLI's environment with secrets everywhere: a database password, AWS keys, a staff password, a
    password in the S3 endpoint's URL."""
    assert pg_url.startswith("postgresql://postgres:@")
    monkeypatch.setenv("RAIOX_DATABASE_URL", pg_url.replace("postgres:@", f"postgres:{DB_PASSWORD}@", 1))
    monkeypatch.setenv("RAIOX_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RAIOX_STORAGE_URL", f"s3://{s3_bucket}/refs")
    monkeypatch.setenv("RAIOX_S3_ENDPOINT_URL", s3_endpoint.replace("http://", f"http://minio:{ENDPOINT_PASSWORD}@"))
    monkeypatch.setenv("RAIOX_STAFF_PASSWORD", STAFF_PASSWORD)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", AWS_TOKEN)
    # The model is the same whatever the settings: reuse the session's instead of loading it per command.
    monkeypatch.setattr("raiox_core.embedder.load_from_settings", lambda settings: embedder)
    return monkeypatch


def assert_secret_free(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret ({secret[:4]}…) was printed or logged"


def test_no_secret_in_output_or_debug_logs_and_user_text_stays_text(secret_env, tmp_path, capsys, caplog):
    for name in (None, "psycopg", "botocore", "urllib3"):  # psycopg sets its own logger to WARNING
        caplog.set_level(logging.DEBUG, logger=name)  # everything: request headers, connection attempts
    files = labelled_pngs(3, start=400)
    paths = []
    for (name, data), shown in zip(files, [IMG_NAME, files[1][0], files[2][0]]):
        (tmp_path / shown).write_bytes(data)
        paths.append(str(tmp_path / shown))

    def run(*args) -> tuple[int, str, str]:
        code = raiox_cli.main(list(args))
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        return code, out, err

    code, out, _ = run("ingest", *paths, "--manufacturer", SCRIPT, "--model", "<img src=x onerror=alert(1)>",
                       "--diameter", "4.1", "--json")
    assert code == 0
    ingested = json.loads(out)["ingested"]
    assert {(i["file"], i["manufacturer"], i["model"]) for i in ingested} >= {(IMG_NAME, SCRIPT, "<IMG SRC=X ONERROR=ALERT(1)>")}
    code, out, _ = run("match", paths[0], "--json")
    best = json.loads(out)[0]["matches"][0]
    assert code == 0 and (best["manufacturer"], best["source_filename"]) == (SCRIPT, IMG_NAME)
    code, out, _ = run("match", paths[0])
    assert f"{SCRIPT} <IMG SRC=X ONERROR=ALERT(1)>" in out and IMG_NAME in out  # as typed, not escaped or eaten
    code, out, _ = run("list", "--json")
    assert {r["source_filename"] for r in json.loads(out)} == {IMG_NAME, files[1][0], files[2][0]}
    for args in (["stats", "--json"], ["doctor"], ["backup", str(tmp_path / "b.zip")], ["restore", str(tmp_path / "b.zip")]):
        code, out, err = run(*args)
        assert code == 0, out + err
        assert_secret_free(out + err)

    # The database unreachable: one line, exit status 1, and still no password.
    secret_env.setenv("RAIOX_DATABASE_URL", f"postgresql://raiox:{DB_PASSWORD}@127.0.0.1:{free_port()}/raiox")
    secret_env.setenv("RAIOX_DB_TIMEOUT_S", "1")
    for args in (["stats"], ["ingest", paths[0]], ["match", paths[0]], ["backup", str(tmp_path / "c.zip")], ["list"]):
        code, out, err = run(*args)
        assert code == 1 and out == "" and err.count("\n") == 1, (args, err)
        assert "Cannot reach the database at postgresql://raiox@127.0.0.1:" in err
        assert_secret_free(err)

    logged = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "botocore" in logged and "psycopg" in logged  # the debug logs were indeed captured
    assert "x-amz-security-token:***" in logged  # botocore's signed-request logs, with the token masked
    assert_secret_free(logged)
    assert_secret_free(repr(Settings.from_env()))


@pytest.mark.parametrize("url", [
    "postgresql://raiox:{pw}@127.0.0.1:notaport/raiox",
    "mysql://raiox:{pw}@127.0.0.1/raiox",
    "postgresql://raiox:{pw}%ZZ@127.0.0.1/raiox",
    "host=127.0.0.1 port={port} user=raiox password={pw}",
])
def test_malformed_or_dsn_database_urls_never_echo_the_password(secret_env, capsys, url):
    secret_env.setenv("RAIOX_DATABASE_URL", url.format(pw=DB_PASSWORD, port=free_port()))
    secret_env.setenv("RAIOX_DB_TIMEOUT_S", "1")
    assert raiox_cli.main(["stats"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.endswith(".\n"), err
    assert_secret_free(err)


def test_unreachable_database_from_a_real_process(cli_env, tmp_path):
    env = {**cli_env, "RAIOX_DATABASE_URL": f"postgresql://raiox:{DB_PASSWORD}@127.0.0.1:{free_port()}/raiox",
           "RAIOX_DB_TIMEOUT_S": "1", "AWS_SECRET_ACCESS_KEY": AWS_SECRET}
    (tmp_path / "x.png").write_bytes(labelled_pngs(1)[0][1])
    proc = subprocess.run(raiox_command("match", tmp_path / "x.png", "--json"), capture_output=True, text=True,
                          env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("raiox: Cannot reach the database at postgresql://raiox@127.0.0.1:")
    assert_secret_free(proc.stderr)


# -- staff sign-in under attack -------------------------------------------------------------------


def test_attackers_waiting_out_their_failures_do_not_hold_up_a_real_sign_in(db, monkeypatch):
    """Six addresses guess at once; while every one of them sits in its post-failure wait, staff sign in.

    The wait blocks on an event instead of a clock, so the test says what it means without timing: the
    real sign-in completes while all the attackers are still waiting (nothing process-wide is held).
    """
    import threading

    from raiox_dashboard import auth

    attackers = 6
    waiting, release = threading.Semaphore(0), threading.Event()
    monkeypatch.setattr(auth, "_sleep", lambda seconds: (waiting.release(), release.wait(60)))
    answers: dict[str, list[str]] = {}

    def attack(address: str) -> None:
        # Guess until refused: an address gets its password checked lock_after times, then is locked.
        answers[address] = []
        while not (answers[address] and answers[address][-1].startswith("Too many")):
            answers[address].append(auth.verify_attempt("guess", STAFF_PASSWORD, address, db))

    threads = [threading.Thread(target=attack, args=(f"192.0.2.{n}",)) for n in range(attackers)]
    for t in threads:
        t.start()
    try:
        for _ in range(attackers):
            assert waiting.acquire(timeout=15), "the attackers' waits are serialised"
        staff = []
        signer = threading.Thread(target=lambda: staff.append(auth.verify_attempt(STAFF_PASSWORD, STAFF_PASSWORD,
                                                                                   "198.51.100.1", db)))
        signer.start()
        signer.join(timeout=30)
        assert staff == [None]  # signed in, with every attacker still inside its wait
        assert not release.is_set() and all(t.is_alive() for t in threads)
    finally:
        release.set()
        for t in threads:
            t.join(timeout=60)
    assert len(answers) == attackers
    for said in answers.values():
        assert said[:4] == ["Wrong staff password."] * 4 and len(said) == 6, said
        assert said[4].startswith("Wrong staff password.") and "paused for 60 s" in said[4]
        assert said[5].startswith("Too many wrong passwords")


def test_sign_in_attempts_never_reach_the_database(db, monkeypatch):
    from raiox_dashboard import auth
    from tests.reliability.conftest import all_text_in_database

    guess = "my-Guess-8Tq"
    monkeypatch.setattr(auth, "_sleep", lambda seconds: None)
    assert auth.verify_attempt(guess, STAFF_PASSWORD, "192.0.2.7", db) == "Wrong staff password."
    assert auth.verify_attempt(STAFF_PASSWORD, STAFF_PASSWORD, "192.0.2.8", db) is None
    auth.verify_attempt(guess, STAFF_PASSWORD, "192.0.2.8", db)
    stored = all_text_in_database(db)
    assert "192.0.2.7" in stored and guess not in stored and STAFF_PASSWORD not in stored
