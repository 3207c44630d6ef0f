"""RAIOX_INDEX_TYPE=halfvec: 16-bit vectors in the HNSW index (half its size), on pgvector 0.7 or newer only.

The embedded server's pgvector is 0.6, so here only the refusal runs; the index path is tested against an
external server with pgvector >= 0.7 (RAIOX_TEST_DATABASE_URL is not needed: the test skips, saying why).
"""

from __future__ import annotations

import numpy as np
import pytest

from raiox_core.db import HALFVEC_SINCE, Database, _version, open_database
from raiox_core.errors import ConfigError

MODEL, DIM = "test/halfvec", 64


def _pgvector(db) -> tuple[int, ...]:
    return _version(db.pgvector_version())


def test_halfvec_on_an_older_pgvector_is_refused_in_one_sentence(db, settings, pg_url):
    if _pgvector(db) >= HALFVEC_SINCE:
        pytest.skip(f"this server's pgvector {db.pgvector_version()} supports halfvec")
    with pytest.raises(ConfigError) as refused:
        open_database(settings.with_(database_url=pg_url, index_type="halfvec"))
    message = str(refused.value)
    assert "RAIOX_INDEX_TYPE=halfvec needs pgvector 0.7 or newer" in message and db.pgvector_version() in message
    assert message.endswith(".") and ". " not in message  # one sentence


def test_a_halfvec_index_is_built_and_searched_with_full_precision_similarities(db, pg_url):
    if _pgvector(db) < HALFVEC_SINCE:
        pytest.skip(f"halfvec needs pgvector 0.7 or newer; this server has {db.pgvector_version()}")
    half = Database(pg_url, description="halfvec test", index_type="halfvec")
    try:
        rng = np.random.default_rng(3)
        x = rng.standard_normal((300, DIM))
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        rows = [{"manufacturer": "Straumann", "model": "BL", "diameter_mm": 4.1, "source_filename": f"h{i}.png",
                 "sha256": f"{i:064x}", "object_key": f"referencia/{i:064x}.png", "width": 8, "height": 8,
                 "source": "synthetic"} for i in range(300)]
        half.insert_many(rows, [{MODEL: v} for v in x])
        with half.connection() as conn:
            (indexdef,) = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s",
                                       (half._index_name(MODEL),)).fetchone()
        assert "halfvec(64)" in indexdef and "halfvec_cosine_ops" in indexdef
        for q in x[:5]:
            exact = half.search(q, MODEL, k=10, exact=True)
            found = half.search(q, MODEL, k=10, ef_search=200)
            assert len({r["id"] for r in exact} & {r["id"] for r in found}) >= 9
            assert found[0]["similarity"] == pytest.approx(1.0, abs=1e-6)  # from the 32-bit vectors
    finally:
        half.close()
