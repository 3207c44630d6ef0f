"""The adapter of `raiox train`: learnt on stored vectors, judged by grouped cross-validation against the frozen
model, adopted only when it certainly helps, used by every door, switched off by RAIOX_ADAPTER=off."""

from __future__ import annotations

import numpy as np
import pytest

from raiox_core import adapter as ad
from raiox_core import vote_accuracy as va
from raiox_core.errors import DatabaseUnavailable, TooFewReferences
from raiox_core.grouping import groups, unit_rows
from raiox_core.model_state import UNTRAINED, ModelState

BASE = "test/base"


def nuisance_set(n_classes=10, per_class=16, dim=48, seed=0):
    """Classes apart in 6 label directions, drowned by 6 label-free directions of 4x their spread."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    signal, nuisance = basis[:, :6], basis[:, 6:12]
    classes = np.repeat(np.arange(n_classes), per_class)
    x = (rng.normal(size=(n_classes, 6))[classes] @ signal.T + 4.0 * rng.normal(size=(len(classes), 6)) @ nuisance.T
         + 0.3 * rng.normal(size=(len(classes), dim)))
    return unit_rows(x), [f"M{c % 4}" for c in classes], [f"model {c}" for c in classes]


def unstructured_set(n=160, dim=48, seed=1):
    """Random vectors, random labels: nothing for an adapter to learn."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 10, size=n)
    return unit_rows(rng.normal(size=(n, dim))), [f"M{c % 4}" for c in classes], [f"model {c}" for c in classes]


def _labels(manufacturers, models):
    return va.Labels.of(manufacturers, models, [4.0] * len(models))


def test_the_rule_wants_the_lower_bound_above_zero_and_no_certain_loss_of_manufacturer():
    gain = {"value": 0.1, "low": 0.02, "high": 0.2}
    assert ad.decide({"top1_model": gain, "top1_manufacturer": gain})[0]
    assert not ad.decide({"top1_model": {**gain, "low": 0.0}, "top1_manufacturer": gain})[0]
    assert not ad.decide({"top1_model": gain, "top1_manufacturer": {"value": -0.1, "low": -0.2, "high": -0.01}})[0]


def test_fitting_is_deterministic_and_the_id_names_the_residual():
    x, manufacturers, models = nuisance_set(n_classes=4, per_class=6)
    labels = _labels(manufacturers, models)
    params = ad.FitParams(steps=30)
    a, _ = ad.fit(x, labels, groups(x), BASE, params)
    b, _ = ad.fit(x, labels, groups(x), BASE, params)
    assert a.embedding_model == b.embedding_model and a.embedding_model.startswith(BASE + "+adapter:")
    assert ad.Adapter.from_bytes(BASE, a.residual_bytes()).embedding_model == a.embedding_model
    identity = ad.Adapter(BASE, np.zeros_like(a.residual))
    assert np.allclose(identity.apply(x), x, atol=1e-6)  # started at the identity
    assert np.allclose(np.linalg.norm(a.apply(x), axis=1), 1.0, atol=1e-5)


def test_too_few_groups_are_refused():
    x, manufacturers, models = nuisance_set(n_classes=2, per_class=4)
    with pytest.raises(TooFewReferences):
        ad.cross_validate(x, _labels(manufacturers, models), groups(x), BASE)


# -- stored, adopted, switched ----------------------------------------------------------------------


def _store(db, x, manufacturers, models, base=BASE):
    rows = [{"manufacturer": m, "model": mo, "diameter_mm": 4.0, "source_filename": f"{i}.png", "sha256": f"{i:064x}",
             "object_key": f"references/{i:064x}.png", "width": 8, "height": 8, "source": "synthetic", "group_id": None}
            for i, (m, mo) in enumerate(zip(manufacturers, models))]
    return db.insert_many(rows, [{base: v} for v in x])


def test_an_adapter_beats_frozen_vectors_drowned_by_label_free_variation_is_adopted_and_switched_off(db, settings):
    x, manufacturers, models = nuisance_set()
    _store(db, x, manufacturers, models)
    report = ad.train(db, BASE)
    frozen, adapted = report["frozen"]["top1_model"], report["adapted"]["top1_model"]
    assert adapted["low"] > frozen["high"], (frozen, adapted)  # not merely better: the intervals part
    assert report["improvement"]["top1_model"]["low"] > 0 and report["adopt"], report["reason"]
    assert report["adapted"]["top1_manufacturer"]["value"] >= report["frozen"]["top1_manufacturer"]["value"]
    assert len(report["fits"]) == 5 and all(f["loss_end"] < f["loss_start"] for f in report["fits"])
    assert report["adopted"] and report["adapter_model"].startswith(BASE + "+adapter:")
    adapted = db.embeddings(report["adapter_model"])
    assert len(adapted) == len(x)  # every reference
    assert sum(len(ids) for ids in report["fold_ids"]) == len(x)
    assert ad.active_id(db, BASE, settings) == report["adapter_model"]
    assert ad.active_id(db, BASE, settings.with_(adapter="off")) is None
    stored = ad.runs(db, BASE)
    assert stored[0]["adopted"] and stored[0]["active"] and stored[0]["report"]["improvement"]["top1_model"]["low"] > 0
    from raiox_core.calibration import latest

    assert latest(db, report["adapter_model"])["references"] == len(x)  # calibrated on its folds

    assert ad.deactivate(db, BASE) == [report["adapter_model"]]
    assert ad.active_id(db, BASE, settings) is None and len(db.embeddings(BASE)) == len(x)


def test_without_label_structure_it_is_not_adopted_the_run_is_kept_and_nothing_changes(db, settings):
    x, manufacturers, models = unstructured_set()
    _store(db, x, manufacturers, models)
    report = ad.train(db, BASE)
    assert not report["adopt"] and report["improvement"]["top1_model"]["low"] <= 0
    assert "not above zero" in report["reason"]
    assert not report["adopted"] and report["adapter_model"] is None
    assert ad.active_id(db, BASE, settings) is None
    assert set(db.stats()["embedding_models"]) == {BASE}
    (run,) = ad.runs(db, BASE)
    assert not run["adopted"] and not run["active"] and run["report"]["reason"] == report["reason"]


def test_an_active_adapter_is_used_by_matching_and_ingestion_stores_both_vectors(db, settings, embedder):
    from raiox_core.images import ImageLimits
    from raiox_core.ingest import Source, ingest
    from raiox_core.storage import open_storage
    from raiox_core.synthetic import demo_files

    storage = open_storage(settings)
    files = demo_files(per_diameter=1)[:4]
    limits = ImageLimits.from_settings(settings)
    first = ingest([Source.from_bytes(n, d) for n, d in files[:3]], db=db, storage=storage, embedder=embedder, limits=limits)
    base = embedder.embedding_model
    residual = np.random.default_rng(3).normal(scale=0.05, size=(embedder.dim, embedder.dim)).astype(np.float32)
    adapter = ad.Adapter(base, residual)
    ad.adopt(db, adapter, {"references": 3})
    assert len(db.embeddings(adapter.embedding_model)) == 3  # written from the stored base vectors

    state = ModelState(UNTRAINED, base, embedder=embedder)
    active = ad.with_active_adapter(state, db, settings)
    assert active.embedding_model == adapter.embedding_model == active.embedder.embedding_model
    assert active.embedder.dim == embedder.dim and active.embedder.trained is False
    from raiox_core.images import prepare_image

    copy = prepare_image(files[1][1], limits).image
    (top,) = db.search(active.embedder.encode_one(copy), adapter.embedding_model, k=1)
    assert top["id"] == first.ingested[1].id and top["similarity"] > 0.999

    added = ingest([Source.from_bytes(*files[3])], db=db, storage=storage, embedder=active.embedder, limits=limits)
    new_id = added.ingested[0].id
    assert {r["id"] for r in db.embeddings(base)} >= {new_id}
    assert {r["id"] for r in db.embeddings(adapter.embedding_model)} >= {new_id}

    off = ad.with_active_adapter(state, db, settings.with_(adapter="off"))
    assert off.embedding_model == base and off.embedder is embedder

    def down():
        raise DatabaseUnavailable("down")

    assert ad.with_active_adapter(state, down, settings).embedding_model == base  # the base still answers
