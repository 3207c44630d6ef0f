import threading

import numpy as np
import psycopg
import pytest

from raiox_core.db import (HNSW_PARAMS, Database, DuplicateReference, Filters, migrate, migrations,
                           named_queries, redact_url)
from raiox_core.errors import DatabaseUnavailable

MODEL = "test/model"


def unit(rng, dim=512):
    v = rng.standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def row(i, manufacturer="Straumann", model="BL", diameter=4.1):
    return {
        "manufacturer": manufacturer, "model": model, "diameter_mm": diameter, "source_filename": f"f{i}.png",
        "sha256": f"{i:064x}", "object_key": f"referencia/{i:064x}.png", "width": 100, "height": 100,
        "source": "synthetic",
    }


def insert(db, i, vector, **labels):
    with db.inserting(row(i, **labels), vector, MODEL) as ref_id:
        pass
    return ref_id


def test_named_queries_and_migrations_are_found():
    assert "insert-reference" in named_queries()
    assert [v for v, _, _ in migrations()][0] == 1


def test_migrations_are_idempotent_and_safe_concurrently(pg_url, db):
    errors = []

    def run():
        try:
            migrate(pg_url)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(pg_url) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations")]
    assert versions == sorted(set(versions))


def test_insert_get_search_returns_exact_copy_first(db):
    rng = np.random.default_rng(0)
    vectors = [unit(rng) for _ in range(50)]
    ids = [insert(db, i, v) for i, v in enumerate(vectors)]
    hits = db.search(vectors[7], MODEL, k=5)
    assert hits[0]["id"] == ids[7]
    assert hits[0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert [h["similarity"] for h in hits] == sorted((h["similarity"] for h in hits), reverse=True)
    assert db.get(ids[0])["manufacturer"] == "Straumann"


def test_search_uses_the_per_model_hnsw_index(db):
    rng = np.random.default_rng(1)
    for i in range(20):
        insert(db, i, unit(rng))
    with db.connection() as conn:
        # Other tests' models leave their own indexes: count only this model's.
        defs = [d for (d,) in conn.execute("SELECT indexdef FROM pg_indexes WHERE indexdef ILIKE '%%hnsw%%'"
                                           " AND indexdef LIKE %s", (f"%'{MODEL}'%",))]
        names = defs
    assert len(names) == 1 and "m='16'" in defs[0].replace(" ", "") and "ef_construction='128'" in defs[0].replace(" ", "")


def _index_validity(db) -> list[bool]:
    """indisvalid of every index on MODEL's vectors (a failed concurrent rebuild leaves an invalid copy)."""
    with db.connection() as conn:
        return [v for (v,) in conn.execute(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE pg_get_indexdef(c.oid) LIKE %s", (f"%'{MODEL}'%",))]


def test_an_index_built_with_older_parameters_is_found_and_rebuilt_without_losing_vectors(db, age_index):
    rng = np.random.default_rng(4)
    vectors = [unit(rng) for _ in range(40)]
    ids = [insert(db, i, v) for i, v in enumerate(vectors)]
    current = HNSW_PARAMS
    assert db.index_params(MODEL) == current and MODEL not in db.outdated_indexes()
    assert db.index_params("no/such-model") is None

    age_index(db.url, MODEL)
    assert db.outdated_indexes()[MODEL] == {"m": 16, "ef_construction": 64}
    db.rebuild_index(MODEL)
    assert db.index_params(MODEL) == current and MODEL not in db.outdated_indexes()
    hits = db.search(vectors[9], MODEL, k=3)
    assert hits[0]["id"] == ids[9] and len(hits) == 3
    assert _index_validity(db) == [True]  # one valid index: no half-built copy of REINDEX CONCURRENTLY left


def test_a_rebuild_stopped_by_the_server_leaves_the_old_index_as_it_was(db, age_index, pg_url):
    rng = np.random.default_rng(5)
    vectors = [unit(rng) for _ in range(3000)]  # a graph whose rebuild outlasts a 50 ms statement timeout
    db.ensure_model_index(MODEL, 512)
    with db.connection() as conn:
        ids = [i for (i,) in conn.execute(
            "INSERT INTO reference_implants (manufacturer, model, diameter_mm, source_filename, sha256, object_key,"
            " width, height, source) SELECT 'Straumann', 'BL', 4.1, 'f' || g || '.png', lpad(to_hex(g), 64, '0'),"
            " 'referencia/' || g || '.png', 100, 100, 'synthetic' FROM generate_series(1, 3000) g RETURNING id")]
        conn.cursor().executemany("INSERT INTO embeddings (reference_id, model_id, dim, embedding)"
                                  " VALUES (%s, %s, 512, %s)", [(i, MODEL, v) for i, v in zip(ids, vectors)])
    age_index(db.url, MODEL)
    impatient = Database(f"{pg_url}{'&' if '?' in pg_url else '?'}options=-c%20statement_timeout%3D50",
                         description="test PostgreSQL")
    try:
        with pytest.raises(DatabaseUnavailable, match="index is unchanged"):
            impatient.rebuild_index(MODEL)
    finally:
        impatient.close()
    assert db.outdated_indexes()[MODEL] == {"m": 16, "ef_construction": 64}  # not claimed as rebuilt
    assert _index_validity(db) == [True]  # the unfinished copy is gone, the old index still serves
    assert db.search(vectors[7], MODEL, k=3)[0]["id"] == ids[7]


def test_vectors_of_other_models_are_never_compared(db):
    rng = np.random.default_rng(2)
    v = unit(rng)
    insert(db, 1, v)
    assert db.search(v, "other/model", k=3) == []


def test_duplicate_hash_raises_with_existing_id(db):
    rng = np.random.default_rng(3)
    first = insert(db, 1, unit(rng))
    with pytest.raises(DuplicateReference) as info:
        insert(db, 1, unit(rng))
    assert info.value.reference_id == first
    assert db.count() == 1


def test_failure_inside_insert_block_leaves_no_row(db):
    rng = np.random.default_rng(4)
    with pytest.raises(RuntimeError):
        with db.inserting(row(1), unit(rng), MODEL):
            raise RuntimeError("storage failed")
    assert db.count() == 0
    assert db.stats()["models"] == {}


def test_filtered_search_returns_k_results_when_selective(db):
    rng = np.random.default_rng(5)
    names = ["Nobel Biocare", "Straumann", "Neodent", "Zimmer"]
    for i in range(200):
        insert(db, i, unit(rng), manufacturer=names[i % 4])
    hits = db.search(unit(rng), MODEL, k=10, filters=Filters(manufacturer="Zimmer"))
    assert len(hits) == 10 and {h["manufacturer"] for h in hits} == {"Zimmer"}


def test_list_count_filters_and_text_search(db):
    rng = np.random.default_rng(6)
    insert(db, 1, unit(rng), manufacturer="Neodent", model="DRIVE", diameter=3.5)
    insert(db, 2, unit(rng), manufacturer="Neodent", model="HELIX", diameter=4.3)
    insert(db, 3, unit(rng), manufacturer="Zimmer", model="TSV", diameter=4.7)
    assert db.count(Filters(manufacturer="Neodent")) == 2
    assert db.count(Filters(diameter_min=4.0, diameter_max=4.5)) == 1
    assert [r["model"] for r in db.list(Filters(text="helix"))] == ["HELIX"]
    assert db.count(Filters(text="50%_' OR 1=1 --")) == 0


def test_stats_update_labels_delete_and_match_log(db):
    rng = np.random.default_rng(7)
    ref = insert(db, 1, unit(rng))
    db.update_labels(ref, "Zimmer", "TSV", 4.7)
    stats = db.stats()
    assert stats["references"] == 1 and stats["by_manufacturer"] == {"Zimmer": 1} and stats["models"] == {MODEL: 1}
    log_id = db.log_match(query_sha256="a" * 64, model_id=MODEL, k=3, filters={}, results=[{"id": ref}],
                          confidence=0.9, confident=True)
    db.set_feedback(log_id, "wrong", "Neodent DRIVE")
    assert db.match_log(log_id)["feedback_label"] == "Neodent DRIVE"
    assert db.delete(ref) == row(1)["object_key"]
    assert db.stats()["models"] == {}


def test_redact_url_hides_password():
    shown = redact_url("postgresql://raiox:s3cret@db.example.com:5432/raiox?password=x")
    assert "s3cret" not in shown and "password" not in shown and "db.example.com:5432/raiox" in shown
