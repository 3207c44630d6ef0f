"""The wheel `pip wheel .` builds: what it contains, and that Raiox runs from it, outside the checkout.

.ci/run also installs it, with its dependencies, into a fresh virtual environment; here the wheel is unpacked
and put first on PYTHONPATH, so that the package found is the wheel's, not the checkout's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.envs import subprocess_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)], check=True,
                   capture_output=True, timeout=300)
    (path,) = out.glob("raiox-*.whl")
    return path


def test_the_wheel_ships_sql_and_dashboard_under_raiox_names_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"raiox_core", "raiox_dashboard", "raiox_api"}
    for expected in ("raiox_core/sql/queries.sql", "raiox_core/sql/001_schema.sql", "raiox_dashboard/main.py",
                     "raiox_dashboard/streamlit.toml", "raiox_dashboard/pages/match.py", "raiox_api/app.py",
                     "raiox_api/routes/matching.py"):
        assert expected in names
    shipped = {Path(n).name for n in names if n.startswith("raiox_core/sql/") and n.endswith(".sql")}
    assert shipped == {p.name for p in (ROOT / "sql").glob("*.sql")}


@pytest.fixture(scope="module")
def from_wheel(wheel, tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path_factory.mktemp("elsewhere")  # not the checkout: nothing found relative to it
    env = subprocess_env()
    env.update(PYTHONPATH=str(site), RAIOX_DATA_DIR=str(elsewhere / "data"), RAIOX_PRETRAINED="none")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "raiox_core.cli", *args], capture_output=True, text=True,
                              env=env, cwd=elsewhere, timeout=300)

    run.site = site
    return run


def test_doctor_and_stats_run_from_the_wheel_on_a_fresh_embedded_database(from_wheel):
    where = subprocess.run([sys.executable, "-c", "import raiox_core, raiox_dashboard; print(raiox_core.__file__);"
                            " print(raiox_dashboard.__file__)"], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONPATH": str(from_wheel.site)}, cwd=from_wheel.site.parent)
    assert all(line.startswith(str(from_wheel.site)) for line in where.stdout.split())
    doctor = from_wheel("doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "pgvector" in doctor.stdout
    stats = json.loads(from_wheel("stats", "--json").stdout)
    assert stats["references"] == 0


def test_bench_outside_a_checkout_says_where_it_runs(from_wheel):
    proc = from_wheel("bench", "--quick")
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("raiox: raiox bench runs from a source checkout of Raiox: clone it, "
                                   "`pip install -e .` there and run `raiox bench` in it.")


def test_a_missing_sql_file_is_a_clear_error(from_wheel):
    (from_wheel.site / "raiox_core" / "sql" / "queries.sql").rename(from_wheel.site / "queries.sql.away")
    try:
        proc = from_wheel("stats")
    finally:
        (from_wheel.site / "queries.sql.away").rename(from_wheel.site / "raiox_core" / "sql" / "queries.sql")
    assert proc.returncode == 1
    assert "Raiox's SQL file queries.sql is missing" in proc.stderr and "Traceback" not in proc.stderr
