"""The explorer with an adopted adapter: the map shows the adapter's vectors, and the base model can be set beside
it (accuracy, cluster table, confusion of each); RAIOX_ADAPTER=off shows the base model again."""

from __future__ import annotations

import numpy as np

from tests.app.conftest import page_test


def _adopt_random_adapter(db, base_model: str, dim: int):
    from raiox_core import adapter as ad

    residual = np.random.default_rng(5).normal(scale=0.05, size=(dim, dim)).astype(np.float32)
    return ad.adopt(db, ad.Adapter(base_model, residual), {"references": 0})["adapter_model"]


def test_an_adapter_beside_its_base_model(seeded, db, monkeypatch):
    from raiox_dashboard import resources

    base = resources.get_embedder().embedding_model
    adapter_model = _adopt_random_adapter(db, base, resources.get_embedder().dim)
    resources.clear_query_caches()  # the dashboard looks the active adapter up again within 30 s; a test cannot wait

    at = page_test("explorer", timeout=120)
    at.session_state["explorer_method"] = "PCA"
    at.run()
    assert not at.exception
    assert any(adapter_model in c.value for c in at.caption)  # the active model is the adapter
    (select,) = [s for s in at.selectbox if s.key == "explorer_compare"]
    assert select.options == [base]
    before = len(at.dataframe)
    select.set_value(base).run()
    assert not at.exception
    assert [m.label for m in at.metric].count("Model top-1") == 3  # the page's own, then one per model compared
    assert len(at.dataframe) == before + 2  # a cluster table each
    assert any("flatter it" in c.value for c in at.caption)  # the adapter's leave-one-out is on its training set

    monkeypatch.setenv("RAIOX_ADAPTER", "off")
    resources.get_settings.clear()
    at = page_test("explorer", timeout=120)
    at.session_state["explorer_method"] = "PCA"
    at.run()
    assert not at.exception
    assert not any(adapter_model in c.value for c in at.caption if "vector space" in c.value)
