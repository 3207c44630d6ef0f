"""Leave-one-group-out accuracy with /match's vote, the precision/coverage curve and the threshold it sets."""

from __future__ import annotations

import numpy as np
import pytest

from raiox_core import calibration
from raiox_core import vote_accuracy as va
from raiox_core.config import Settings
from raiox_core.grouping import grouped_folds, groups, unit_rows
from raiox_core.match import VOTE_POOL, vote
from raiox_core.references import Neighbour
from raiox_core.threshold import threshold_in_force


def _clustered(n_classes=8, per_class=12, dim=32, noise=0.8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    classes = np.repeat(np.arange(n_classes), per_class)
    x = centres[classes] + noise * rng.normal(size=(len(classes), dim))
    manufacturers = [f"M{c % 3}" for c in classes]
    models = [f"model {c}" for c in classes]
    return x, va.Labels.of(manufacturers, models, [4.0] * len(classes)), manufacturers, models


def test_groups_join_near_identical_vectors_and_shared_ids():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 16))
    x[1] = x[0] * 3 + 1e-3 * rng.normal(size=16)  # the same direction: one implant's two images
    x[2] = x[1] + 1e-3 * rng.normal(size=16)  # near x[1]: joined through the chain
    found = groups(x, [None, None, None, "implant-7", None, "implant-7"])
    assert found[0] == found[1] == found[2]
    assert found[3] == found[5] != found[4]
    assert len(set(found)) == 3
    folds = grouped_folds(found, 2)
    assert folds[0] == folds[1] == folds[2] and folds[3] == folds[5]


def test_a_copy_does_not_vouch_for_itself():
    """Random vectors whose labels mean nothing, each stored twice: without groups every reference finds its
    copy (100%); left out with its group, accuracy falls to chance."""
    rng = np.random.default_rng(2)
    base = rng.normal(size=(60, 32))
    x = np.repeat(base, 2, axis=0)
    labels = va.Labels.of([f"M{i % 4}" for i in range(60) for _ in (0, 1)], ["m"] * 120, [4.0] * 120)
    alone = np.arange(120)
    ungrouped = va.outcomes(x, labels, x, labels, query_groups=alone, gallery_groups=alone)
    assert (ungrouped.ranks["manufacturer"] == 0).mean() == 1.0
    grouped_of = groups(x)
    assert len(set(grouped_of)) == 60
    grouped = va.outcomes(x, labels, x, labels, query_groups=grouped_of, gallery_groups=grouped_of)
    assert (grouped.ranks["manufacturer"] == 0).mean() < 0.45


def test_the_vote_is_the_one_of_match():
    x, labels, manufacturers, models = _clustered()
    alone = np.arange(len(x))
    out = va.outcomes(x, labels, x, labels, query_groups=alone, gallery_groups=alone)
    unit = unit_rows(x)
    for i in (0, 17, 50, 95):
        sims = unit @ unit[i]
        sims[i] = -np.inf
        nearest = np.argsort(-sims, kind="stable")[:VOTE_POOL]
        neighbours = [Neighbour(id=int(j), manufacturer=manufacturers[j], model=models[j], diameter_mm=4.0,
                                similarity=float(sims[j]), source_filename="", object_key="", source="upload")
                      for j in nearest]
        by_manufacturer, by_model = vote(neighbours)
        assert out.confidence[i] == pytest.approx(by_manufacturer[0].probability, abs=1e-6)
        assert (out.ranks["manufacturer"][i] == 0) == (by_manufacturer[0].label == manufacturers[i])
        assert (out.ranks["model"][i] == 0) == (by_model[0].label == f"{manufacturers[i]} {models[i]}")


def test_accuracy_has_intervals_and_the_curve_trades_coverage_for_precision():
    x, labels, manufacturers, _ = _clustered(noise=1.6)
    group_of = groups(x)
    out = va.outcomes(x, labels, x, labels, query_groups=group_of, gallery_groups=group_of)
    counts = va.bootstrap_counts(int(group_of.max()) + 1)
    acc = va.accuracy(out, group_of, counts)
    for figure in acc.values():
        assert 0 <= figure["low"] <= figure["value"] <= figure["high"] <= 1
    assert acc["top5_model"]["value"] >= acc["top1_model"]["value"]
    curve = va.precision_coverage(out)
    coverage = [p["coverage"] for p in curve]
    assert coverage[0] == 1.0 and coverage == sorted(coverage, reverse=True)
    assert curve[0]["precision"] == pytest.approx(acc["top1_manufacturer"]["value"], abs=1e-4)


def test_the_threshold_for_a_target_precision():
    curve = [{"threshold": t, "precision": p, "coverage": 1 - t, "answered": 1}
             for t, p in [(0.5, 0.80), (0.6, 0.96), (0.7, 0.94), (0.8, 0.97), (0.9, 0.99), (1.0, None)]]
    assert va.threshold_for(curve, 0.95) == 0.8  # 0.6 reaches it, but 0.7 dips below: not trusted
    assert va.threshold_for(curve, 0.90) == 0.6
    assert va.threshold_for(curve, 0.995) is None


def test_the_threshold_in_force_and_where_it_came_from(db):
    model = "test-model/calibration"
    default = Settings()
    assert threshold_in_force(default, db, model).source.startswith("the default, as RAIOX_TARGET_PRECISION")
    target = Settings(target_precision=0.95)
    missing = threshold_in_force(target, db, model)
    assert missing.value == 0.6 and "run `raiox evaluate`" in missing.source
    curve = [{"threshold": t, "precision": p, "coverage": 1.0, "answered": 10} for t, p in [(0.6, 0.9), (0.7, 0.97)]]
    calibration.save(db, model, {"references": 40, "precision_coverage": curve})
    found = threshold_in_force(target, db, model)
    assert found.value == 0.7 and found.source.startswith("calibrated for precision 0.95 on 40 references (")
    assert threshold_in_force(Settings(target_precision=0.99), db, model).value == 0.6
    overridden = Settings.from_env({"RAIOX_MATCH_THRESHOLD": "0.42", "RAIOX_TARGET_PRECISION": "0.95"})
    assert threshold_in_force(overridden, db, model).to_json() == {"value": 0.42, "source": "RAIOX_MATCH_THRESHOLD"}
