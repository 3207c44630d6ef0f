"""Fixtures for AppTest: the real embedded database and local storage, caches reset per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from raiox_core.images import ImageLimits

ROOT = Path(__file__).resolve().parents[2]
STAFF_PASSWORD = "correct horse battery staple"


@pytest.fixture
def app_env(monkeypatch, tmp_path, pg_url, db):
    """Point the app at the test database and a fresh storage dir; reset Streamlit's caches around each test."""
    import streamlit as st

    from raiox_dashboard import resources

    monkeypatch.setenv("RAIOX_DATABASE_URL", pg_url)
    monkeypatch.setenv("RAIOX_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RAIOX_PRETRAINED", "none")
    monkeypatch.setenv("RAIOX_DEVICE", "cpu")
    monkeypatch.setenv("RAIOX_STAFF_PASSWORD", STAFF_PASSWORD)

    def reset():
        # The model and the database pool are kept: the same in every test (one pg_url per run), and
        # slow to create. Everything else follows the per-test settings.
        resources.get_settings.clear()
        resources.get_storage.clear()
        st.cache_data.clear()

    reset()
    yield
    reset()


@pytest.fixture
def seeded(app_env, db):
    """The synthetic demo set (one image per diameter) ingested into the test database and storage."""
    from raiox_dashboard import resources
    from raiox_core.ingest import Source, ingest
    from raiox_core.synthetic import demo_files

    sources = [Source.from_bytes(name, data) for name, data in demo_files(per_diameter=1)]
    report = ingest(sources, db=resources.get_db(), storage=resources.get_storage(), embedder=resources.get_embedder(),
                    source="synthetic", limits=ImageLimits())
    assert report.ingested and not report.rejected
    return report


@pytest.fixture
def downloads(monkeypatch):
    """File name -> bytes of every st.download_button payload (AppTest keeps them in a per-run store)."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    captured: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def capture(self, path_or_data, mimetype, kind, filename=None):
        if filename:
            captured[filename] = path_or_data
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", capture)
    return captured


def page_test(name: str, timeout: float = 60):
    """An AppTest of one page script run through the real entrypoint's sidebar."""
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=timeout)
