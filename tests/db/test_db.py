import itertools
import threading
import uuid
from dataclasses import dataclass

import numpy as np
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from raiox_core.db import (DEFAULT_EF_SEARCH, EXACT_SEARCH_MAX_ROWS, FILTERED_EF_SEARCH, HNSW_PARAMS, Database,
                           DuplicateReference, Filters, migrate, migrations, named_queries, redact_url)
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
    with db.inserting(row(i, **labels), {MODEL: vector}) as ref_id:
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


@dataclass
class ExplainedSearch:
    """A similarity search as PostgreSQL planned it, and the HNSW candidate list size it ran with."""

    plan: dict
    ef_search: str | None

    def index_scans(self) -> list[str]:
        """The indexes the plan reads by an Index Scan (an HNSW search is one: ordered by distance)."""
        def walk(node):
            if node["Node Type"] == "Index Scan":
                yield node["Index Name"]
            for child in node.get("Plans", []):
                yield from walk(child)

        return list(walk(self.plan))


@pytest.fixture
def explained_searches(monkeypatch) -> list[ExplainedSearch]:
    """Every similarity search (SQL with <=>) run meanwhile, EXPLAINed just before it runs: the same SQL and
    parameters on the same connection, inside its transaction, so under the settings it SET LOCAL."""
    real_execute = psycopg.Cursor.execute
    seen: list[ExplainedSearch] = []

    def execute(self, query, params=None, **kwargs):
        text = query.as_string(self.connection) if isinstance(query, sql.Composable) else query
        if isinstance(text, str) and "<=>" in text:
            probe = psycopg.Cursor(self.connection)
            (plan,) = real_execute(probe, "EXPLAIN (FORMAT JSON) " + text, params).fetchone()
            (ef_search,) = real_execute(probe, "SELECT current_setting('hnsw.ef_search', true)").fetchone()
            seen.append(ExplainedSearch(plan[0]["Plan"], ef_search))
        return real_execute(self, query, params, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    return seen


def hnsw_index_of(conn, embedding_model: str) -> str:
    """The name of the model's one HNSW index (other tests' models have their own)."""
    [(name,)] = conn.execute("SELECT indexname FROM pg_indexes WHERE indexdef ILIKE '%%using hnsw%%'"
                             " AND indexdef LIKE %s", (f"%'{embedding_model}'%",)).fetchall()
    return name


def test_search_uses_the_per_model_hnsw_index(db, explained_searches):
    rng = np.random.default_rng(1)
    vectors = [unit(rng) for _ in range(300)]  # enough that a scan and a sort would cost more (at 20, they do not)
    ids = [insert(db, i, v) for i, v in enumerate(vectors)]
    with db.connection() as conn:
        conn.execute("ANALYZE embeddings, reference_implants")  # the statistics autovacuum would have gathered
        index = hnsw_index_of(conn, MODEL)
        (indexdef,) = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (index,)).fetchone()
    assert "m='16'" in indexdef.replace(" ", "") and "ef_construction='128'" in indexdef.replace(" ", "")

    hits = db.search(vectors[3], MODEL, k=5)
    assert hits[0]["id"] == ids[3] and len(hits) == 5
    (search,) = explained_searches
    assert index in search.index_scans(), search.plan
    assert search.ef_search == str(DEFAULT_EF_SEARCH)


LARGE_MODEL, LARGE_DIM = "test/large-model", 16  # short vectors: cheap to load (the graph build is most of the cost)
# Every fifth reference Nobel Biocare, the others Straumann: 20,800 Straumann candidates, more than an exact scan takes.
LARGE_ROWS = EXACT_SEARCH_MAX_ROWS * 5 // 4 + 1_000


@pytest.fixture(scope="module")
def large_db(pg_url):
    """(Database, vectors, manufacturers, ids) of a database of its own: LARGE_ROWS references of one model loaded
    with COPY, indexed, analysed as autovacuum would; dropped at the end of the module."""
    name = f"raiox_large_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(pg_url, dbname=name)
    database = None
    try:
        migrate(url)
        rng = np.random.default_rng(13)
        vectors = rng.standard_normal((LARGE_ROWS, LARGE_DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        with psycopg.connect(url) as conn:
            refs = conn.execute(
                "INSERT INTO reference_implants (manufacturer, model, diameter_mm, source_filename, sha256, object_key,"
                " width, height, source) SELECT CASE WHEN g %% 5 = 0 THEN 'Nobel Biocare' ELSE 'Straumann' END, 'BL', 4.1,"
                " 'f' || g || '.png', lpad(to_hex(g), 64, '0'), 'referencia/' || g || '.png', 100, 100, 'synthetic'"
                " FROM generate_series(1, %s) g ORDER BY g RETURNING id, manufacturer", (LARGE_ROWS,)).fetchall()
            with conn.cursor().copy("COPY embeddings (reference_id, embedding_model, dim, embedding) FROM STDIN") as copy:
                for (ref_id, _), v in zip(refs, vectors):
                    copy.write_row((ref_id, LARGE_MODEL, LARGE_DIM, "[" + ",".join(map(str, v)) + "]"))
        database = Database(url, description="large test PostgreSQL")
        database.ensure_model_index(LARGE_MODEL, LARGE_DIM)  # built over the loaded rows, as a rebuild would
        with database.connection() as conn:
            conn.execute("ANALYZE embeddings, reference_implants")
        yield database, vectors, np.array([m for _, m in refs]), np.array([i for i, _ in refs])
    finally:
        if database is not None:
            database.close()
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_a_filtered_search_of_more_candidates_than_an_exact_scan_takes_uses_the_index(large_db, explained_searches):
    db, vectors, manufacturers, ids = large_db
    straumann, nobel = Filters(manufacturer="Straumann"), Filters(manufacturer="Nobel Biocare")
    assert db.count(nobel) <= EXACT_SEARCH_MAX_ROWS < db.count(straumann)
    with db.connection() as conn:
        index = hnsw_index_of(conn, LARGE_MODEL)
    query, k = unit(np.random.default_rng(14), LARGE_DIM), 10

    def nearest(manufacturer: str) -> set[int]:
        """The true k nearest of one manufacturer, by brute force."""
        keep = manufacturers == manufacturer
        return set(ids[keep][np.argsort(-(vectors[keep] @ query))[:k]].tolist())

    # Above the limit: the HNSW index, with the larger ef_search, still gives k rows, all of the filter's.
    hits = db.search(query, LARGE_MODEL, k=k, filters=straumann)
    assert len(hits) == k and {h["manufacturer"] for h in hits} == {"Straumann"}
    assert len({h["id"] for h in hits} & nearest("Straumann")) >= k - 2  # approximate, but close
    (search,) = explained_searches
    assert index in search.index_scans(), search.plan
    assert search.ef_search == str(FILTERED_EF_SEARCH)

    # At or below the limit: an exact scan, the true nearest, no index.
    hits = db.search(query, LARGE_MODEL, k=k, filters=nobel)
    assert len(hits) == k and {h["manufacturer"] for h in hits} == {"Nobel Biocare"}
    assert {h["id"] for h in hits} == nearest("Nobel Biocare")
    assert index not in explained_searches[1].index_scans(), explained_searches[1].plan


def test_a_filtered_index_search_that_finds_fewer_than_k_rows_is_repeated_exactly(db, explained_searches, monkeypatch):
    """Labels that follow the vectors (one manufacturer's cluster around the query, the filter's elsewhere): the
    HNSW scan's ef_search nearest are all of the wrong manufacturer, so the filter keeps none of them."""
    model, dim, k = "test/two-clusters", 16, 5
    rng = np.random.default_rng(21)
    near, far = unit(rng, dim), unit(rng, dim)
    wanted = []
    for i in range(FILTERED_EF_SEARCH + 150):  # more of the query's cluster than the index scan returns
        v = near + 0.05 * rng.standard_normal(dim).astype(np.float32)
        with db.inserting(row(i, manufacturer="Nobel Biocare"), {model: v / np.linalg.norm(v)}):
            pass
    for i in range(FILTERED_EF_SEARCH + 150, FILTERED_EF_SEARCH + 300):
        v = far + 0.05 * rng.standard_normal(dim).astype(np.float32)
        with db.inserting(row(i, manufacturer="Straumann"), {model: v / np.linalg.norm(v)}) as ref_id:
            wanted.append((float(v @ near / np.linalg.norm(v)), ref_id))
    with db.connection() as conn:
        conn.execute("ANALYZE embeddings, reference_implants")
        index = hnsw_index_of(conn, model)
    monkeypatch.setattr("raiox_core.db.EXACT_SEARCH_MAX_ROWS", 100)  # 150 Straumann candidates: the index path

    hits = db.search(near, model, k=k, filters=Filters(manufacturer="Straumann"))
    assert [h["id"] for h in hits] == [i for _, i in sorted(wanted, reverse=True)[:k]]  # the true nearest
    first, again = explained_searches
    assert index in first.index_scans() and first.ef_search == str(FILTERED_EF_SEARCH), first.plan
    assert index not in again.index_scans(), again.plan


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
        conn.cursor().executemany("INSERT INTO embeddings (reference_id, embedding_model, dim, embedding)"
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
        with db.inserting(row(1), {MODEL: unit(rng)}):
            raise RuntimeError("storage failed")
    assert db.count() == 0
    assert db.stats()["embedding_models"] == {}


def test_filtered_search_returns_k_results_when_selective(db):
    rng = np.random.default_rng(5)
    names = ["Nobel Biocare", "Straumann", "Neodent", "Zimmer"]
    for i in range(200):
        insert(db, i, unit(rng), manufacturer=names[i % 4])
    hits = db.search(unit(rng), MODEL, k=10, filters=Filters(manufacturer="Zimmer"))
    assert len(hits) == 10 and {h["manufacturer"] for h in hits} == {"Zimmer"}


def test_label_variety_takes_what_the_neighbours_show_and_asks_only_for_the_rest(db, monkeypatch):
    """Labels seen among a search's neighbours never change the answer; two manufacturers, or two models under
    a manufacturer filter, answer it without opening a connection."""
    rng = np.random.default_rng(31)
    labels = [("Straumann", "BL"), ("Straumann", "BLT"), ("Nobel Biocare", "REPLACE")]
    for i, (manufacturer, model) in enumerate(labels):
        insert(db, i, unit(rng), manufacturer=manufacturer, model=model)
    insert(db, 9, unit(rng), manufacturer="Osstem", model="TS3")
    with db.connection() as conn:  # Osstem has no vector of MODEL: a search of it never sees Osstem
        conn.execute("DELETE FROM embeddings WHERE reference_id = (SELECT id FROM reference_implants"
                     " WHERE manufacturer = 'Osstem')")
    filters = [Filters(), Filters(manufacturer="Straumann"), Filters(manufacturer="Nobel Biocare"),
               Filters(manufacturer="Straumann", model="BL"), Filters(manufacturer="Osstem")]
    for f in filters:
        searched = {(m, n) for m, n in labels if f.manufacturer in (None, m) and f.model in (None, n)}
        expected = db.label_variety(MODEL, f)
        for size in range(len(searched) + 1):
            for seen in itertools.combinations(sorted(searched), size):
                assert db.label_variety(MODEL, f, seen=seen) == expected, (f, seen)

    opened = []
    real = db.connection
    monkeypatch.setattr(db, "connection", lambda *a, **kw: opened.append(1) or real(*a, **kw))
    assert db.label_variety(MODEL, seen=[labels[0], labels[2]]) == (2, 2)
    assert db.label_variety(MODEL, Filters(manufacturer="Straumann"), seen=labels[:2]) == (1, 2)
    assert not opened
    assert db.label_variety(MODEL, seen=labels[:2]) == (2, 2) and opened  # one manufacturer seen: the set has two


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
    assert stats["references"] == 1 and stats["by_manufacturer"] == {"Zimmer": 1} and stats["embedding_models"] == {MODEL: 1}
    log_id = db.log_match(query_sha256="a" * 64, embedding_model=MODEL, k=3, filters={}, results=[{"id": ref}],
                          confidence=0.9, confident=True)
    db.set_feedback(log_id, "wrong", "Neodent DRIVE")
    assert db.match_log(log_id)["feedback_label"] == "Neodent DRIVE"
    assert db.delete(ref) == row(1)["object_key"]
    assert db.stats()["embedding_models"] == {}


def test_redact_url_hides_password():
    shown = redact_url("postgresql://raiox:s3cret@db.example.com:5432/raiox?password=x")
    assert "s3cret" not in shown and "password" not in shown and "db.example.com:5432/raiox" in shown
