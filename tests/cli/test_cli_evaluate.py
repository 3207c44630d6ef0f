"""`raiox evaluate`, groups given at ingestion, and the calibrated threshold reaching `raiox match`."""

import json

import pytest

from raiox_core.synthetic import demo_files
from tests.cli.test_cli import run, write  # noqa: F401  (run is a fixture)

pytestmark = pytest.mark.slow


def test_evaluate_groups_and_the_threshold_it_calibrates(run, tmp_path, db):  # noqa: F811
    files = demo_files(per_diameter=1)
    paths = write(tmp_path, files[:14])
    assert run("ingest", *paths[:12], "--json").returncode == 0
    assert run("ingest", *paths[12:], "--group", " implant-7 ", "--json").returncode == 0
    listed = {r["source_filename"]: r["group_id"] for r in json.loads(run("list", "--json").stdout)}
    assert listed[files[12][0]] == listed[files[13][0]] == "implant-7" and listed[files[0][0]] is None

    proc = run("evaluate", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["references"] == 14 and report["groups"] <= 13  # the two of implant-7 are one group
    assert set(report["accuracy"]) == {f"top{k}_{level}" for k in (1, 5)
                                       for level in ("manufacturer", "model", "model_diameter")}
    assert [m["manufacturer"] for m in report["by_manufacturer"]] == sorted({m["manufacturer"] for m in report["by_manufacturer"]})
    assert report["precision_coverage"][0] == {**report["precision_coverage"][0], "threshold": 0.0, "coverage": 1.0}
    assert report["threshold"] == {"value": 0.6, "source": "the default, as RAIOX_TARGET_PRECISION is not set"}
    stored = db.query("latest-calibration", {"embedding_model": "ViT-B-32/untrained"})
    assert stored[0]["n_references"] == 14

    human = run("evaluate").stdout
    assert "left out a group at a time" in human and "Threshold in force: 60%" in human

    # A target no threshold reaches (untrained weights): the default stays, and the answer says why.
    proc = run("match", paths[13], "--json", RAIOX_TARGET_PRECISION="0.999")
    (answer,) = json.loads(proc.stdout)
    assert answer["threshold"] == 0.6 and "no threshold reached precision 0.999" in answer["threshold_source"]
