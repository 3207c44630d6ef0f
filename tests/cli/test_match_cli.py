"""`raiox match` as a clinician runs it: the answer under a manufacturer filter and for an exact copy."""

import json

import pytest

from raiox_core.synthetic import demo_files
from tests.cli.test_cli import run, write  # noqa: F401  (run is a fixture)

pytestmark = pytest.mark.slow


def test_match_under_a_filter_and_an_exact_copy(run, tmp_path):  # noqa: F811
    files = demo_files(per_diameter=1)[:6]
    paths = write(tmp_path, files)
    assert run("ingest", *paths[1:]).returncode == 0
    # paths[0] is not a reference; paths[1] is one, byte for byte.
    proc = run("match", paths[0], paths[1], "--manufacturer", "nobel", "--json", RAIOX_MATCH_THRESHOLD="0.99")
    assert proc.returncode == 0, proc.stderr
    filtered, exact = json.loads(proc.stdout)
    assert filtered["restricted_to"] == "Nobel Biocare" and filtered["confidence_of"] == "model"
    assert filtered["vote"]["manufacturer"][0]["probability"] == 1.0
    assert filtered["confidence"] == filtered["vote"]["model"][0]["probability"]
    assert filtered["confident"] == (filtered["confidence"] >= 0.99)
    assert exact["exact_reference"]["source_filename"] == files[1][0]
    assert exact["answer"].startswith(f"this exact image is reference #{exact['exact_reference']['id']}")

    human = run("match", paths[0], paths[1], "--manufacturer", "Nobel Biocare").stdout.splitlines()
    assert "(search restricted to Nobel Biocare)" in human[0] and "among Nobel Biocare's models" in human[0]
    assert f"This exact image is reference #{exact['exact_reference']['id']}" in next(
        line for line in human if line.startswith(paths[1]))
