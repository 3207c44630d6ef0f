"""Uploaded X-rays stay with the session that sent them: no page passes an upload, or anything derived from
it, to st.cache_data or st.cache_resource, whose entries every user of the server shares.

Every call of a cached function computes its cache key from its arguments (hit or miss), so recording the
arguments of those key computations shows exactly what entered, or was looked up in, a shared cache.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest

from tests.app.conftest import STAFF_PASSWORD, page_test

UPLOAD_NAME = "ana_pereira_1987-05-04.png"  # a name that could identify a patient


@pytest.fixture
def shared_cache_calls(monkeypatch):
    """(cache type, function name, arguments) of every st.cache_data/st.cache_resource call from now on."""
    from streamlit.runtime.caching import cache_utils

    calls: list[tuple[str, str, tuple]] = []
    real = cache_utils._make_value_key

    def recording(cache_type, func, func_args, func_kwargs, hash_funcs):
        # Underscore-prefixed arguments are left out of the key but still stored with the call: recorded too.
        calls.append((str(cache_type), getattr(func, "__qualname__", repr(func)),
                      (*func_args, *func_kwargs.values())))
        return real(cache_type, func, func_args, func_kwargs, hash_funcs)

    monkeypatch.setattr(cache_utils, "_make_value_key", recording)
    return calls


def query_png() -> bytes:
    """A synthetic radiograph that is not one of the seeded references (so its vector is no reference's)."""
    from raiox_core.synthetic import CATALOGUE, render

    out = io.BytesIO()
    render(CATALOGUE[0], 4.0, seed=987_654).save(out, format="PNG")
    return out.getvalue()


def _parts(value, depth: int = 0):
    """The value and everything inside it: containers, dataclass fields, an object's attributes."""
    yield value
    if depth > 4 or isinstance(value, (str, bytes, bytearray, memoryview, np.ndarray, int, float)):
        return
    if isinstance(value, dict):
        children = [*value.keys(), *value.values()]
    elif isinstance(value, (list, tuple, set, frozenset)):
        children = list(value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        children = [getattr(value, f.name) for f in dataclasses.fields(value)]
    else:
        children = []
    for child in children:
        yield from _parts(child, depth + 1)


def upload_traces(calls, upload: bytes, derived_bytes=(), derived_text=(), derived_vectors=()) -> list[str]:
    """One line per shared-cache argument that is, holds or derives from the upload."""
    from PIL import Image

    from raiox_core.images import PreparedImage

    found = []
    for cache_type, name, args in calls:
        for part in (p for arg in args for p in _parts(arg)):
            if isinstance(part, (bytes, bytearray, memoryview)):
                data = bytes(part)
                hit = upload in data or any(d and d in data for d in derived_bytes)
            elif isinstance(part, str):
                hit = any(t and t in part for t in derived_text)
            elif isinstance(part, (Image.Image, PreparedImage)):
                hit = True  # no cached function takes a decoded image: references go by object key
            elif isinstance(part, np.ndarray) and part.dtype.kind == "f" and part.size:
                rows = part.reshape(-1, part.shape[-1])
                hit = any(rows.shape[1] == v.shape[-1] and np.isclose(rows, v, atol=1e-6).all(axis=1).any()
                          for v in derived_vectors)
            else:
                hit = False
            if hit:
                found.append(f"{cache_type} {name}: {type(part).__name__}")
    return found


def names(calls) -> set[str]:
    return {name for _, name, _ in calls}


def test_the_explorer_embeds_an_upload_per_session_not_in_a_shared_cache(seeded, shared_cache_calls):
    data = query_png()
    at = page_test("explorer", timeout=120)
    at.session_state["explorer_method"] = "PCA"
    at.run()
    at.file_uploader(key="explorer_query").upload(UPLOAD_NAME, data, "image/png")
    at.run()
    assert not at.exception, at.exception
    # The page did place the query, from this session's memo...
    _, (vector, thumbnail) = at.session_state["explorer_query_embedding"]
    assert vector.shape == (512,) and thumbnail.startswith(b"\x89PNG")
    assert any(img.caption for element in at.get("image") for img in element.proto.imgs)
    at.run()  # a rerun (any widget) reuses it
    assert not at.exception
    # ...and the shared caches were used, for the reference data only.
    assert {"cached_embeddings", "_evaluation"} <= names(shared_cache_calls)
    assert upload_traces(shared_cache_calls, data, derived_bytes=[thumbnail], derived_text=[UPLOAD_NAME],
                         derived_vectors=[vector]) == []

    # Removing the file forgets the X-ray's vector and thumbnail too.
    at.file_uploader(key="explorer_query").clear()
    at.run()
    assert not at.exception and "explorer_query_embedding" not in at.session_state


def test_the_match_page_keeps_an_upload_out_of_shared_caches(seeded, shared_cache_calls):
    data = query_png()
    at = page_test("match", timeout=120).run()
    at.file_uploader(key="match_upload").upload(UPLOAD_NAME, data, "image/png")
    at.run()
    assert not at.exception, at.exception
    original = at.session_state["match_original"][1]
    result = at.session_state["match_result"][1]
    assert result.matches  # the page matched, and showed the references' thumbnails from the shared cache
    at.slider(key="match_k").set_value(5).run()
    assert not at.exception
    assert {"cached_stats", "reference_thumbnail"} <= names(shared_cache_calls)
    assert upload_traces(shared_cache_calls, data, derived_bytes=[original.png],
                         derived_text=[UPLOAD_NAME, original.sha256]) == []


def test_the_ingest_preview_keeps_uploads_out_of_shared_caches(app_env, shared_cache_calls):
    data = query_png()
    at = page_test("ingest").run()
    at.text_input(key="ingest_password").input(STAFF_PASSWORD)
    at.button[[b.label for b in at.button].index("Sign in")].click()
    at.run()
    at.file_uploader[0].set_value([(UPLOAD_NAME, data, "image/png")]).run()
    assert not at.exception and at.dataframe  # the validation table of the upload
    assert upload_traces(shared_cache_calls, data, derived_text=[UPLOAD_NAME]) == []


def test_the_recorder_sees_an_upload_passed_to_a_shared_cache(app_env, shared_cache_calls):
    """The check above would catch the leak it looks for: a cached function given the upload's bytes."""
    import streamlit as st

    @st.cache_data
    def leaky(data: bytes, _name: str) -> int:
        return len(data)

    data = query_png()
    leaky(data, UPLOAD_NAME)
    assert upload_traces(shared_cache_calls, data, derived_text=[UPLOAD_NAME]) == [
        "CacheType.DATA test_the_recorder_sees_an_upload_passed_to_a_shared_cache.<locals>.leaky: bytes",
        "CacheType.DATA test_the_recorder_sees_an_upload_passed_to_a_shared_cache.<locals>.leaky: str",
    ]
    leaky.clear()
