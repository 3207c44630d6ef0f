"""Cluster quality and leave-one-out accuracy on synthetic vectors whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import silhouette_samples

from raiox_core.evaluate import evaluate, evaluate_rows
from raiox_core.errors import TooFewReferences


def clustered(n_manufacturers=4, models_per=2, per_model=6, dim=64, spread=0.05, seed=0):
    """Tight clusters around random, nearly orthogonal centres; models of a manufacturer sit close together."""
    rng = np.random.default_rng(seed)
    vectors, manufacturers, models = [], [], []
    for m in range(n_manufacturers):
        centre = rng.standard_normal(dim)
        for j in range(models_per):
            model_centre = centre + 0.3 * rng.standard_normal(dim)
            for _ in range(per_model):
                vectors.append(model_centre + spread * rng.standard_normal(dim))
                manufacturers.append(f"M{m}")
                models.append(f"X{j}")
    v = np.asarray(vectors, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True), manufacturers, models


def test_separated_clusters_are_found_perfectly():
    v, man, mod = clustered()
    ev = evaluate(v, man, mod)
    assert list(ev.by_manufacturer["manufacturer"]) == ["M0", "M1", "M2", "M3"]
    assert (ev.by_manufacturer["references"] == 12).all()
    assert (ev.by_manufacturer["top1"] == 1.0).all() and (ev.by_manufacturer["top5"] == 1.0).all()
    assert (ev.by_model["top1"] == 1.0).all()
    assert (ev.by_manufacturer["silhouette"] > 0.5).all()
    assert (ev.by_manufacturer["cohesion"] < ev.by_manufacturer["separation"]).all()
    assert ev.overall["top1_manufacturer"] == 1.0 and ev.overall["top1_model"] == 1.0
    # Perfect predictions: everything on the diagonal.
    cm = ev.confusion_manufacturer
    assert list(cm.index) == list(cm.columns) == ["M0", "M1", "M2", "M3"]
    assert np.array_equal(cm.to_numpy(), np.diag([12, 12, 12, 12]))
    assert ev.confusion_model.shape == (8, 8) and np.trace(ev.confusion_model.to_numpy()) == 48


def test_random_vectors_score_near_chance():
    rng = np.random.default_rng(1)
    n_classes, per = 5, 60
    v = rng.standard_normal((n_classes * per, 256)).astype(np.float32)
    man = [f"M{i % n_classes}" for i in range(len(v))]
    ev = evaluate(v, man, ["A"] * len(v))
    chance = (per - 1) / (len(v) - 1)  # the nearest other reference has our label by luck
    assert abs(ev.overall["top1_manufacturer"] - chance) < 0.08
    assert abs(ev.by_manufacturer["silhouette"]).max() < 0.05
    # Top-5: chance that at least one of 5 random others shares the label.
    assert 0.5 < ev.overall["top5_manufacturer"] < 0.85


def test_silhouette_matches_sklearn_and_chunking_changes_nothing():
    v, man, mod = clustered(spread=0.8, seed=3)
    whole = evaluate(v, man, mod)
    chunked = evaluate(v, man, mod, chunk_rows=7)
    expected = silhouette_samples(v, man, metric="cosine")
    assert np.allclose(whole.predictions["silhouette"], expected, atol=1e-4)
    per_class = {m: expected[np.asarray(man) == m].mean() for m in set(man)}
    for _, row in whole.by_manufacturer.iterrows():
        assert row["silhouette"] == pytest.approx(per_class[row["manufacturer"]], abs=1e-4)
    for a, b in [(whole.by_manufacturer, chunked.by_manufacturer), (whole.by_model, chunked.by_model)]:
        num = a.select_dtypes("number").columns
        assert np.allclose(a[num].to_numpy(float), b[num].to_numpy(float), atol=1e-5, equal_nan=True)
    assert whole.predictions["nearest_id"].tolist() == chunked.predictions["nearest_id"].tolist()


def test_cohesion_and_separation_by_hand():
    # Two classes on a circle: a at 0° and 60°, b at 180°. Cosine distances: a-a 0.5, a-b 2 and 1.5.
    angles = np.radians([0, 60, 180])
    v = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    ev = evaluate(v, ["a", "a", "b"], ["x", "x", "y"], ids=[10, 11, 12])
    a = ev.by_manufacturer.set_index("manufacturer")
    assert a.loc["a", "cohesion"] == pytest.approx(0.5, abs=1e-6)
    assert a.loc["a", "separation"] == pytest.approx((2.0 + 1.5) / 2, abs=1e-6)
    assert np.isnan(a.loc["b", "cohesion"])  # a class of one has no pairs
    assert a.loc["b", "silhouette"] == 0.0  # sklearn's rule for singletons
    assert a.loc["b", "top1"] == 0.0  # a singleton can never be found
    preds = ev.predictions.set_index("id")
    assert preds.loc[10, "nearest_id"] == 11 and preds.loc[12, "nearest_id"] == 11
    assert ev.confusion_manufacturer.loc["b", "a"] == 1


def test_top5_counts_a_hit_anywhere_in_the_five_nearest():
    # The query's own class mate is its 3rd nearest: a top-1 miss, a top-5 hit.
    angles = np.radians([0, 10, 20, 30, 90, 200])
    v = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    man = ["q", "o1", "o2", "q", "o3", "o4"]
    ev = evaluate(v, man, ["m"] * 6)
    first = ev.predictions.iloc[0]
    assert first["predicted_manufacturer"] == "o1"
    assert not first["top1_manufacturer"] and first["top5_manufacturer"]


def test_one_manufacturer_and_too_few():
    v, _, _ = clustered(n_manufacturers=1)
    ev = evaluate(v, ["only"] * len(v), ["m"] * len(v))
    assert ev.overall["top1_manufacturer"] == 1.0
    assert np.isnan(ev.by_manufacturer.loc[0, "silhouette"]) and np.isnan(ev.by_manufacturer.loc[0, "separation"])
    with pytest.raises(TooFewReferences):
        evaluate(v[:1], ["a"], ["b"])


def test_evaluate_rows_uses_database_row_shape():
    v, man, mod = clustered(n_manufacturers=2, models_per=1, per_model=4)
    rows = [{"id": i + 100, "manufacturer": m, "model": mo, "diameter_mm": 4.0, "embedding": vec}
            for i, (vec, m, mo) in enumerate(zip(v, man, mod))]
    ev = evaluate_rows(rows)
    assert ev.predictions["id"].min() == 100
    assert set(ev.by_manufacturer["manufacturer"]) == {"M0", "M1"}
