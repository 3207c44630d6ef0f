"""The `raiox` command run as a real subprocess, as a user would."""

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from raiox_core.synthetic import demo_files
from tests.envs import subprocess_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def files():
    return demo_files(per_diameter=1)[:6]


@pytest.fixture
def run(tmp_path, pg_url, db):
    env = subprocess_env()
    env.update(RAIOX_DATABASE_URL=pg_url, RAIOX_DATA_DIR=str(tmp_path / "data"), RAIOX_PRETRAINED="none",
               RAIOX_DEVICE="cpu", HF_HUB_OFFLINE="1")

    def run(*args, program=("-m", "raiox_core.cli"), **extra_env):
        proc = subprocess.run([sys.executable, *program, *args], capture_output=True, text=True,
                              env={**env, **extra_env}, timeout=300, cwd=tmp_path)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    return run


def write(tmp_path, files):
    paths = []
    for name, data in files:
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    return paths


def test_ingest_match_list_stats_delete_json(run, tmp_path, files):
    paths = write(tmp_path, files)
    (tmp_path / "notes.jpg").write_text("not an image")
    proc = run("ingest", *paths, str(tmp_path / "notes.jpg"), "--json")
    assert proc.returncode == 1  # one file was refused
    report = json.loads(proc.stdout)
    assert len(report["ingested"]) == len(files) and report["duplicates"] == []
    assert report["rejected"][0]["file"] == "notes.jpg" and report["rejected"][0]["reason"].endswith(".")
    assert set(report["ingested"][0]) == {"id", "file", "manufacturer", "model", "diameter_mm"}
    assert "UNTRAINED" in proc.stderr

    again = json.loads(run("ingest", *paths, "--json").stdout)
    assert len(again["duplicates"]) == len(files) and again["ingested"] == []

    proc = run("match", paths[2], str(tmp_path / "notes.jpg"), "--k", "2", "--json")
    assert proc.returncode == 1
    first, refused = json.loads(proc.stdout)
    assert first["matches"][0]["source_filename"] == files[2][0] and first["matches"][0]["similarity"] >= 0.99
    assert len(first["matches"]) == 2 and first["embedding_model"] == "ViT-B-32/untrained"
    assert {"manufacturer", "model"} == set(first["vote"])
    assert refused["file"].endswith("notes.jpg") and refused["error"].endswith(".")

    stats = json.loads(run("stats", "--json").stdout)
    assert stats["references"] == len(files) and stats["embedding_models"] == stats["models"] == {"ViT-B-32/untrained": len(files)}
    listed = json.loads(run("list", "--manufacturer", "Nobel Biocare", "--json").stdout)
    assert listed and {r["manufacturer"] for r in listed} == {"Nobel Biocare"}

    assert run("delete", str(listed[0]["id"])).returncode == 0
    proc = run("delete", str(listed[0]["id"]))
    assert proc.returncode == 1 and proc.stderr.strip().endswith(f"There is no reference with id {listed[0]['id']}.")


def test_human_output_and_labels_from_flags(run, tmp_path, files):
    path = tmp_path / "unnamed-scan.png"
    path.write_bytes(files[0][1])
    proc = run("ingest", str(path))
    assert proc.returncode == 1 and "does not follow MANUFACTURER_MODEL_DIAMETER" in proc.stdout
    proc = run("ingest", str(path), "--manufacturer", "Zimmer", "--model", "TSV", "--diameter", "4.1")
    assert proc.returncode == 0 and "Zimmer TSV 4.1 mm" in proc.stdout
    proc = run("match", str(path))
    assert proc.returncode == 0 and "1. #" in proc.stdout and "Zimmer TSV" in proc.stdout


def test_zip_ingest_on_s3_storage(run, tmp_path, files, s3_endpoint, s3_bucket):
    archive = tmp_path / "refs.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name, data in files[:3]:
            z.writestr(f"batch/{name}", data)
        z.writestr("../escape.png", files[3][1])
    s3 = {"RAIOX_STORAGE_URL": f"s3://{s3_bucket}/refs", "RAIOX_S3_ENDPOINT_URL": s3_endpoint}
    proc = run("ingest", str(archive), "--json", **s3)
    report = json.loads(proc.stdout)
    assert len(report["ingested"]) == 3 and len(report["rejected"]) == 1
    import boto3

    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert len(keys) == 3 and all(k.startswith("refs/referencia/") for k in keys)
    match = json.loads(run("match", str(tmp_path / files[0][0]) if (tmp_path / files[0][0]).exists() else
                           str(write(tmp_path, files[:1])[0]), "--json", **s3).stdout)[0]
    assert match["matches"][0]["source_filename"] == files[0][0]
    doctor = run("doctor", **s3)
    assert doctor.returncode == 0 and "pgvector" in doctor.stdout and "s3:" in doctor.stdout


def test_doctor_names_an_index_built_with_older_parameters_and_repair_rebuilds_it(run, tmp_path, files, pg_url,
                                                                                    age_index):
    assert run("ingest", *write(tmp_path, files[:3])).returncode == 0
    assert "indexes  current (m=16, ef_construction=128)" in run("doctor").stdout
    age_index(pg_url, "ViT-B-32/untrained")
    doctor = run("doctor")
    assert doctor.returncode == 0
    assert "ViT-B-32/untrained: built with m=16, ef_construction=64" in doctor.stdout
    assert "`raiox doctor --repair` rebuilds" in doctor.stdout
    repaired = run("doctor", "--repair")
    assert repaired.returncode == 0 and "1 rebuilt with m=16, ef_construction=128" in repaired.stdout
    assert "indexes  current" in run("doctor").stdout
    match = json.loads(run("match", str(tmp_path / files[1][0]), "--json").stdout)[0]
    assert match["matches"][0]["source_filename"] == files[1][0]


def test_usage_and_configuration_errors(run, tmp_path):
    assert run("match").returncode == 2
    assert run("match", "x.png", "--k", "0").returncode == 2
    for args in (["match", "x.png", "--k", "100000000000"], ["list", "--limit", "99999999999999999999"]):
        proc = run(*args)  # not a database overflow with a traceback: a usage error
        assert proc.returncode == 2 and "must be between 1 and" in proc.stderr, proc.stderr
    proc = run("stats", RAIOX_DEVICE="tpu")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "RAIOX_DEVICE" in proc.stderr
    proc = run("match", str(tmp_path / "nope.png"))
    assert proc.returncode == 1 and "could not be read" in proc.stderr


def test_unreachable_database_is_one_line_without_password(run):
    proc = run("stats", RAIOX_DATABASE_URL="postgresql://raiox:hunter2secret@127.0.0.1:9/raiox", RAIOX_DB_TIMEOUT_S="2")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "Cannot reach the database" in proc.stderr and "hunter2secret" not in proc.stderr


def test_demo_seeds_the_embedded_database_even_without_weights(tmp_path):
    """As a new user on a machine without the default weights: it falls back to untrained ones, loudly."""
    env = subprocess_env()
    env.update(RAIOX_DATA_DIR=str(tmp_path / "fresh"), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "raiox_core.cli"]
    proc = subprocess.run(cmd + ["demo", "--no-app"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "not cached" in proc.stderr and "UNTRAINED" in proc.stderr and "Traceback" not in proc.stderr
    assert "could not be loaded, so `raiox demo` fell back to untrained ones" in proc.stderr  # says why
    env["RAIOX_PRETRAINED"] = "none"
    stats = json.loads(subprocess.run(cmd + ["stats", "--json"], capture_output=True, text=True, env=env).stdout)
    assert stats["references"] >= 40 and len(stats["by_manufacturer"]) >= 4
    assert stats["embedding_models"] == {"ViT-B-32/untrained": stats["references"]}
    again = subprocess.run(cmd + ["demo", "--no-app"], capture_output=True, text=True, env=env, timeout=600)
    assert "Seeded 0 synthetic references" in again.stdout


def test_file_names_cannot_forge_or_hide_output_lines(run, tmp_path, files):
    name = "scan\x1b[2K\r\nraiox: ok\u202egnp.png"  # erase the line, start a forged one, reverse the text
    (tmp_path / name).write_bytes(files[0][1])
    labels = ["--manufacturer", "Zimmer", "--model", "TSV", "--diameter", "4.1"]
    shown = "scan\\x1b[2K\\r\\nraiox: ok\\u202egnp.png"
    outputs = [run("ingest", str(tmp_path / name), *labels).stdout, run("list").stdout,
               run("match", str(tmp_path / name)).stdout]
    for out in outputs:
        assert shown in out and not set(out) & {"\x1b", "\r", "\u202e"}, out
    assert outputs[1].count("\n") == 1  # one reference, one line
    missing = run("match", str(tmp_path / "gone\n.png"))
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "gone\\n.png" in missing.stderr
    assert json.loads(run("list", "--json").stdout)[0]["source_filename"] == name  # JSON keeps the name as it is


# The outage begins once the command has opened its pool: the pool's reconnection attempts then log
# warnings, which must not reach stderr line after line: an error is one line.
LOSE_DB_AFTER_OPEN = """
import sys
from raiox_core import cli, db, embedded_pg
opened = db.open_database
def open_then_lose(settings):
    database = opened(settings)
    embedded_pg.stop(settings.data_dir.resolve() / "pg")
    return database
db.open_database = open_then_lose
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_database_outage_is_one_line_on_stderr():
    data_dir = Path(tempfile.mkdtemp(prefix="raiox-test-outage-"))  # not tmp_path: postgres runs as another user
    env = subprocess_env()
    env.update(RAIOX_DATA_DIR=str(data_dir), RAIOX_DB_TIMEOUT_S="2")
    try:
        proc = subprocess.run([sys.executable, "-c", LOSE_DB_AFTER_OPEN, "stats"], capture_output=True, text=True,
                              env=env, timeout=120)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout
    assert proc.stderr.startswith("raiox: Cannot reach the database") and proc.stderr.count("\n") == 1, proc.stderr
