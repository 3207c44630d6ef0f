"""The model's state through the real entrypoint (app/main.py): shown in the sidebar of every page from the first
render, the reason an untrained model is in use, and references without the active model's vectors."""

from __future__ import annotations

import pytest

from tests.app.conftest import ROOT, STAFF_PASSWORD

PAGES = ["references", "explorer", "ingest"]  # /match is the default page, rendered first


def dashboard(timeout: float = 120):
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=timeout)


def configure(monkeypatch, **env) -> None:
    from raiox_dashboard import resources

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    resources.get_settings.clear()


def text(elements) -> list[str]:
    """Element text with markdown escapes and word joiners removed: what a user reads."""
    import re

    return [re.sub(r"\\(.)", r"\1", e.value).replace("\u2060", "") for e in elements]


def test_weights_that_cannot_be_loaded_are_shown_on_every_page_with_the_fix(seeded, monkeypatch, tmp_path):
    missing = tmp_path / "missing.pt"
    configure(monkeypatch, RAIOX_PRETRAINED=str(missing))
    at = dashboard().run()
    assert not at.exception
    for page in [None, *PAGES]:
        if page:
            at.switch_page(f"../pages/{page}.py").run()
            assert not at.exception, page
        sidebar = text(at.sidebar.error)
        assert any(s.startswith("**Model unavailable**: The checkpoint file") and str(missing) in s
                   and "Set RAIOX_PRETRAINED" in s for s in sidebar), (page, sidebar)
        if page is None:  # /match: said plainly before anyone uploads, and no uploader to try
            assert any("Matching is unavailable" in e for e in text(at.main.error))
            assert not at.main.get("file_uploader")
        if page == "explorer":  # not "0 references", nor advice to add some or to re-embed: why there is no map
            notice = [e for e in text(at.main.error) if "could not be loaded" in e]
            assert notice and f"so the {len(seeded.ingested)} references cannot be matched or mapped" in notice[0]
            assert not at.main.info and "raiox reembed" not in " ".join(text(at.main.warning))


def test_a_demo_fallback_says_why_the_model_is_untrained(seeded, monkeypatch, tmp_path):
    configure(monkeypatch, RAIOX_PRETRAINED=str(tmp_path / "missing.pt"), RAIOX_UNTRAINED_FALLBACK="1")
    at = dashboard().run()
    assert not at.exception
    warnings = text(at.sidebar.warning)
    assert any("Untrained model weights (ViT-B-32/untrained)" in w and "could not be loaded, so `raiox demo` fell back"
               in w for w in warnings), warnings
    assert not any("RAIOX_PRETRAINED=none is set" in w for w in warnings)
    assert any(m.value == "**Model**: untrained" for m in at.sidebar.markdown)
    # The pages use the vectors that exist (the untrained ones): nothing is missing, matching works.
    assert not any("have no vectors" in w for w in text(at.main.warning))
    assert at.main.get("file_uploader")


def test_staff_compute_missing_vectors_with_a_button(seeded, monkeypatch, tmp_path, db):
    import torch

    from raiox_dashboard import resources

    checkpoint = tmp_path / "image-tower.pt"
    torch.save(resources.get_embedder().model.state_dict(), checkpoint)  # same weights, another model id
    configure(monkeypatch, RAIOX_PRETRAINED=str(checkpoint), RAIOX_PRECISION="fp32")
    embedding_model = resources.get_model_state().embedding_model
    assert embedding_model.startswith("ViT-B-32/file:image-tower.pt@")
    total = len(seeded.ingested)

    at = dashboard().run()
    assert not at.exception
    assert any(w.startswith(f"{total} of {total} references have no vectors") for w in text(at.main.warning))
    at.text_input(key="match_reembed_password").input(STAFF_PASSWORD)
    next(b for b in at.button if b.label == "Sign in").click()
    at.run()
    next(b for b in at.button if b.label == f"Compute {total} vectors").click()
    at.run()
    assert not at.exception
    assert db.stats()["embedding_models"][embedding_model] == total
    assert not any("have no vectors" in w for w in text(at.main.warning))


@pytest.fixture
def id_computations(monkeypatch):
    """Every embedding_model_for call and every checkpoint hash, wherever the model's state is built."""
    from raiox_core import embedder, model_state

    calls = {"embedding_model_for": [], "file_digest": []}
    real_id, real_digest = embedder.embedding_model_for, embedder._file_digest

    def embedding_model_for(model, pretrained, digest=None):
        calls["embedding_model_for"].append(pretrained)
        return real_id(model, pretrained, digest)

    def file_digest(path):
        calls["file_digest"].append(path)
        return real_digest(path)

    monkeypatch.setattr(embedder, "embedding_model_for", embedding_model_for)
    monkeypatch.setattr(model_state, "embedding_model_for", embedding_model_for)
    monkeypatch.setattr(embedder, "_file_digest", file_digest)
    return calls


def test_a_checkpoint_is_hashed_once_per_load_not_on_every_rerun(app_env, monkeypatch, tmp_path, id_computations):
    import torch

    from raiox_dashboard import resources

    checkpoint = tmp_path / "rerun-tower.pt"
    torch.save(resources.get_embedder().model.state_dict(), checkpoint)
    for calls in id_computations.values():  # loading the default model for its weights counted too
        calls.clear()
    configure(monkeypatch, RAIOX_PRETRAINED=str(checkpoint), RAIOX_PRECISION="fp32")
    at = dashboard().run()
    assert not at.exception
    assert id_computations == {"embedding_model_for": [str(checkpoint)], "file_digest": [checkpoint]}  # at the load
    embedding_model = resources.get_model_state().embedding_model
    assert embedding_model.startswith("ViT-B-32/file:rerun-tower.pt@")

    at.run()
    for page in PAGES:  # every page asks for the model's state and id on each run
        at.switch_page(f"../pages/{page}.py").run()
        assert not at.exception, page
        assert embedding_model in text(at.sidebar.caption), page
    at.run()
    assert id_computations == {"embedding_model_for": [str(checkpoint)], "file_digest": [checkpoint]}


def test_an_unloadable_checkpoint_is_not_hashed_again_on_reruns(app_env, monkeypatch, tmp_path, id_computations):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint" * 1000)
    configure(monkeypatch, RAIOX_PRETRAINED=str(broken))
    at = dashboard().run()
    assert not at.exception
    assert any(s.startswith("**Model unavailable**") for s in text(at.sidebar.error))
    assert id_computations["file_digest"] == [broken]  # the failed load names the weights it tried once
    at.run()
    at.switch_page("../pages/references.py").run()
    assert not at.exception
    assert id_computations["file_digest"] == [broken] and len(id_computations["embedding_model_for"]) == 1


def test_the_dashboard_starts_the_numba_warm_up_unless_it_is_off(app_env, monkeypatch, tmp_path):
    import psutil

    from raiox_core import numba_warmup

    def warm_ups() -> list:
        found = []
        for child in psutil.Process().children():
            try:
                if "raiox_core.numba_warmup" in child.cmdline():
                    found.append(child)
            except (psutil.ZombieProcess, psutil.NoSuchProcess):  # other tests' children, ended
                pass
        return found

    cache = tmp_path / "numba"
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(cache))
    monkeypatch.setattr(numba_warmup, "_started", False)
    configure(monkeypatch, RAIOX_NUMBA_WARMUP="off")
    assert not dashboard().run().exception
    assert not cache.exists() and not warm_ups()

    configure(monkeypatch, RAIOX_NUMBA_WARMUP="on")
    at = dashboard().run()
    assert not at.exception
    (child,) = warm_ups()  # compiling into the empty cache
    at.switch_page("../pages/references.py").run()  # main.py again: the same child, no other
    assert not at.exception and warm_ups() == [child]
    child.kill()
