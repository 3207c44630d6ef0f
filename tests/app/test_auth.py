"""Staff access: constant-time comparison of digests, slow-down and a server-side lockout, no open default."""

from __future__ import annotations

import pytest

from raiox_dashboard import auth
from raiox_core import sign_in
from raiox_core.images import ImageLimits
from tests.app.conftest import STAFF_PASSWORD, page_test
from tests.sign_in_tools import age_failures, failures_by_client


def _gate_app():
    from streamlit.testing.v1 import AppTest

    def script():
        import streamlit as st

        from raiox_dashboard.auth import require_staff, sign_out_button

        if require_staff("gate"):
            st.success("staff area")
            sign_out_button("gate")

    return AppTest.from_function(script, default_timeout=30)


def _sign_in(at, password: str):
    at.text_input(key="gate_password").input(password)
    at.button[0].click()  # the form's submit button
    return at.run()


def _texts(at) -> list[str]:
    found = []
    for kind in ("markdown", "caption", "text", "error", "info", "success", "warning", "exception"):
        found += [str(getattr(e, "value", "")) for e in at.get(kind)]
    return found


@pytest.fixture
def delays(monkeypatch):
    """Record the slow-down instead of sleeping, so the tests stay fast."""
    waited: list[float] = []
    monkeypatch.setattr(auth, "_sleep", waited.append)
    return waited


def test_check_password_compares_digests_in_constant_time(monkeypatch):
    calls = []
    real = auth.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert auth.check_password(STAFF_PASSWORD, STAFF_PASSWORD)
    assert not auth.check_password("wrong", STAFF_PASSWORD)
    assert not auth.check_password(STAFF_PASSWORD[:-1], STAFF_PASSWORD)
    assert len(calls) == 3
    for a, b in calls:  # fixed-length digests are compared, never the passwords themselves
        assert isinstance(a, bytes) and isinstance(b, bytes) and len(a) == len(b) == 32
        assert STAFF_PASSWORD.encode() not in (a, b)


def test_configured_password_is_hashed_once(monkeypatch):
    hashed = []
    real = auth._digest
    monkeypatch.setattr(auth, "_digest", lambda p: hashed.append(p) or real(p))
    auth._configured_digest.cache_clear()
    for attempt in ("a", "b", "c"):
        auth.check_password(attempt, "configured-once")
    assert hashed.count("configured-once") == 1 and len(hashed) == 4


def test_no_password_means_never_signed_in():
    assert not auth.check_password("", None)
    assert not auth.check_password("anything", "")


def test_failure_delay_grows_and_is_capped():
    steps = [auth.failure_delay(n) for n in range(1, 10)]
    assert steps[0] > 0
    assert all(later >= earlier for earlier, later in zip(steps, steps[1:]))
    assert steps[1] > steps[0] and max(steps) == auth.MAX_DELAY_S


def test_no_password_configured_disables_staff_features(app_env, monkeypatch):
    from raiox_dashboard import resources
    from raiox_core.ingest import Source, ingest
    from raiox_core.synthetic import demo_files

    monkeypatch.delenv("RAIOX_STAFF_PASSWORD")
    name, data = demo_files(per_diameter=1)[0]
    report = ingest([Source.from_bytes(name, data)], db=resources.get_db(), storage=resources.get_storage(),
                    embedder=resources.get_embedder(), limits=ImageLimits())
    for page in ("ingest", "references"):
        at = page_test(page)
        at.secrets = {"UNRELATED": "x"}  # stands in for .streamlit/secrets.toml, without the password
        at.query_params["id"] = str(report.ingested[0].id)  # the references page opens this one in detail
        at.run()
        assert not at.exception
        assert any("RAIOX_STAFF_PASSWORD" in i.value for i in at.info)
        assert not [t for t in at.text_input if t.key.endswith("_password")]
        assert not at.file_uploader
        assert not [b for b in at.button if b.key.startswith("delete_")]
    gate = _gate_app()
    gate.secrets = {"UNRELATED": "x"}
    gate.run()
    assert any("RAIOX_STAFF_PASSWORD" in i.value for i in gate.info)
    assert not gate.text_input and not gate.success


def test_password_from_secrets_toml(app_env, monkeypatch, delays):
    monkeypatch.delenv("RAIOX_STAFF_PASSWORD")
    at = _gate_app()
    at.secrets = {"RAIOX_STAFF_PASSWORD": "from-secrets"}
    at.run()
    _sign_in(at, "from-secrets")
    assert [s.value for s in at.success] == ["staff area"]


def test_sign_in_sign_out_and_no_echo(app_env, delays):
    at = _gate_app().run()
    assert not at.success and at.text_input(key="gate_password").proto.type == 1  # PASSWORD
    _sign_in(at, STAFF_PASSWORD)
    assert [s.value for s in at.success] == ["staff area"]
    assert not at.error and delays == []
    assert at.text_input == [] or all(t.value == "" for t in at.text_input)
    assert not any(STAFF_PASSWORD in t for t in _texts(at))
    assert STAFF_PASSWORD not in repr(at.session_state)  # the session keeps a digest, not the password
    at.button(key="gate_sign_out").click().run()
    assert not at.success and at.text_input(key="gate_password")


def test_wrong_passwords_slow_down_then_lock_out_across_sessions(app_env, db, monkeypatch, delays):
    """Every attempt from a new session (what a reload gives): the count is the server's, not the session's."""
    checked = []
    real_check = auth.check_password
    monkeypatch.setattr(auth, "check_password", lambda a, c: checked.append(a) or real_check(a, c))
    for n in range(1, 6):
        at = _sign_in(_gate_app().run(), f"guess {n}")
        assert not at.success
        assert "Wrong staff password" in at.error[0].value
        assert not any(f"guess {n}" in t for t in _texts(at))  # the attempt is never echoed
    assert "paused for 60 s" in at.error[0].value
    assert delays == [auth.failure_delay(n) for n in range(1, 6)]
    assert delays[0] > 0 and delays[2] > delays[1] > delays[0]
    # AppTest has no client address: the failures are counted under the shared key, never with the guess.
    assert failures_by_client(db) == {sign_in.UNKNOWN: 5}
    # Locked, in yet another session: even the right password is refused, without being checked.
    at = _sign_in(_gate_app().run(), STAFF_PASSWORD)
    assert not at.success and "Too many wrong passwords" in at.error[0].value
    assert checked == [f"guess {n}" for n in range(1, 6)]
    # Once the pause is over the right password works and the address's failures are forgotten.
    age_failures(db, 61)
    at = _sign_in(_gate_app().run(), STAFF_PASSWORD)
    assert [s.value for s in at.success] == ["staff area"]
    assert failures_by_client(db) == {}


def test_sign_in_without_the_database_is_refused_with_a_sentence(app_env, monkeypatch, port_factory):
    """Failures cannot be counted without the database, so nobody signs in: the page says why."""
    from raiox_dashboard import resources

    monkeypatch.setenv("RAIOX_DATABASE_URL", f"postgresql://raiox@127.0.0.1:{port_factory()}/raiox")
    monkeypatch.setenv("RAIOX_DB_TIMEOUT_S", "1")
    resources.get_settings.clear()
    resources.get_db.clear()
    try:
        at = _sign_in(_gate_app().run(), STAFF_PASSWORD)
        assert not at.exception and not at.success
        assert "Cannot reach the database" in at.error[0].value
    finally:
        resources.get_db.clear()  # the next test opens the real database again


def test_changed_password_signs_the_session_out(app_env, monkeypatch, delays):
    from raiox_dashboard import resources

    at = _gate_app().run()
    _sign_in(at, STAFF_PASSWORD)
    assert at.success
    monkeypatch.setenv("RAIOX_STAFF_PASSWORD", "a new password")
    resources.get_settings.clear()
    at.run()
    assert not at.success and at.text_input(key="gate_password")
