"""`raiox train` on the synthetic radiographs with untrained weights: what it reports, and that it changes
nothing unless its own rule adopts (the rule, not this test, decides)."""

import json

import pytest

from raiox_core.synthetic import demo_files
from tests.cli.test_cli import run  # noqa: F401  (run is a fixture)

pytestmark = pytest.mark.slow


def test_train_reports_the_comparison_and_follows_its_rule(run, db, settings, embedder):  # noqa: F811
    from raiox_core.images import ImageLimits
    from raiox_core.ingest import Source, ingest
    from raiox_core.storage import open_storage

    # Ingested in this process with the session's model (the command's own ingestion is tested elsewhere); the
    # settings fixture and `run` share the data directory and the database.
    files = demo_files(per_diameter=1)[:24]
    report = ingest([Source.from_bytes(n, d) for n, d in files], db=db, storage=open_storage(settings),
                    embedder=embedder, limits=ImageLimits.from_settings(settings))
    assert len(report.ingested) == 24

    proc = run("train", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    figures = {f"top{k}_{level}" for k in (1, 5) for level in ("manufacturer", "model")}
    assert figures <= set(report["frozen"]) and figures <= set(report["adapted"]) and set(report["improvement"]) == figures
    assert {"value", "low", "high"} == set(report["improvement"]["top1_model"])
    assert report["references"] == 24 and report["folds"] == 5 and len(report["fold_ids"]) == 5
    assert report["base_model"] == "ViT-B-32/untrained" and isinstance(report["run_id"], int)
    assert report["adopted"] == (report["improvement"]["top1_model"]["low"] > 0)
    models = set(db.stats()["embedding_models"])
    if report["adopted"]:
        assert models == {"ViT-B-32/untrained", report["adapter_model"]}
    else:
        assert models == {"ViT-B-32/untrained"} and report["adapter_model"] is None

    human = run("train").stdout
    assert "frozen" in human and "adapter" in human and "improvement" in human
    assert ("Adopted as" in human) == report["adopted"] and ("nothing changed" in human) != report["adopted"]
    off = run("train", "--off")
    assert off.returncode == 0 and ("switched off" in off.stdout) == report["adopted"]
