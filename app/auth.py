"""Staff access: one shared password (RAIOX_STAFF_PASSWORD), compared in constant time, slowed on failure.

Ingestion, relabelling and deletion sit behind `require_staff()`. Without a configured password those
features are off: the dashboard is never open by default. The password itself is never stored in the
session, logged or shown; the session keeps a digest of it, so a changed password signs everyone out.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from functools import lru_cache

import streamlit as st

from app.resources import get_settings

# A random salt per process: the digests are only ever compared within this process.
_SALT = secrets.token_bytes(16)
# scrypt at these costs takes ~50 ms and 16 MiB: cheap for one sign-in, expensive for guessing in bulk.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}

# Wrong passwords: the n-th failure in a session waits BASE_DELAY_S * 2**(n-1) seconds (at most
# MAX_DELAY_S); after LOCKOUT_AFTER failures the session is refused for LOCKOUT_S seconds. Module
# constants so that tests can shrink them.
BASE_DELAY_S = 0.5
MAX_DELAY_S = 4.0
LOCKOUT_AFTER = 5
LOCKOUT_S = 60.0
# A new browser session starts with a fresh counter, so checks are also serialised process-wide: guessing
# from many sessions at once gains nothing, since every wrong attempt holds this lock while it waits.
_CHECK_LOCK = threading.Lock()

SIGNED_IN = "raiox_staff_digest"  # session key: digest of the password the session signed in with
FAILURES = "raiox_staff_failures"
LOCKED_UNTIL = "raiox_staff_locked_until"
NOT_CONFIGURED = (
    "Staff features (ingest, edit, delete) are disabled: set RAIOX_STAFF_PASSWORD in the environment "
    "or in .streamlit/secrets.toml, then restart the dashboard."
)


def _digest(password: str) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=_SALT, **_SCRYPT)


@lru_cache(maxsize=4)
def _configured_digest(password: str) -> bytes:
    """The configured password is hashed once per process (per value, should it change)."""
    return _digest(password)


def check_password(attempt: str, configured: str | None) -> bool:
    """True when `attempt` is the configured password; the comparison takes the same time either way."""
    if not configured:
        return False
    return hmac.compare_digest(_digest(attempt), _configured_digest(configured))


def failure_delay(failures: int) -> float:
    """Seconds to wait after the n-th consecutive wrong password of a session."""
    return min(MAX_DELAY_S, BASE_DELAY_S * 2 ** max(0, failures - 1))


def _sleep(seconds: float) -> None:  # a seam for tests
    time.sleep(seconds)


def staff_configured() -> bool:
    return bool(get_settings().staff_password)


def is_staff() -> bool:
    """Signed in with the password configured now (a changed or removed password signs the session out)."""
    configured = get_settings().staff_password
    signed = st.session_state.get(SIGNED_IN)
    if not configured or not isinstance(signed, bytes):
        return False
    return hmac.compare_digest(signed, _configured_digest(configured))


def sign_out() -> None:
    """Forget this session's staff sign-in."""
    st.session_state.pop(SIGNED_IN, None)


def attempt_sign_in(attempt: str) -> str | None:
    """Check one attempt and update the session; None on success, else a sentence saying why not."""
    configured = get_settings().staff_password
    if not configured:
        return NOT_CONFIGURED
    now = time.monotonic()
    locked_until = float(st.session_state.get(LOCKED_UNTIL, 0.0))
    if now < locked_until:
        return f"Too many wrong passwords: try again in {math.ceil(locked_until - now)} s."
    with _CHECK_LOCK:
        if check_password(attempt, configured):
            st.session_state[SIGNED_IN] = _configured_digest(configured)
            st.session_state[FAILURES] = 0
            st.session_state.pop(LOCKED_UNTIL, None)
            return None
        failures = int(st.session_state.get(FAILURES, 0)) + 1
        st.session_state[FAILURES] = failures
        _sleep(failure_delay(failures))
    if failures >= LOCKOUT_AFTER:
        st.session_state[LOCKED_UNTIL] = time.monotonic() + LOCKOUT_S
        return f"Wrong staff password. Too many attempts: sign-in is paused for {LOCKOUT_S:g} s."
    return "Wrong staff password."


def _sign_in_form(key: str) -> None:
    # clear_on_submit: the typed password does not stay in the widget (or the session) after the attempt.
    with st.form(f"{key}_sign_in", clear_on_submit=True):
        st.markdown("**Staff sign-in**")
        attempt = st.text_input("Staff password", type="password", key=f"{key}_password", autocomplete="current-password")
        submitted = st.form_submit_button("Sign in")
    if submitted:
        error = attempt_sign_in(attempt or "")
        if error is None:
            st.rerun()  # draw the page again, now with the staff features
        st.error(error)


def require_staff(key: str = "staff") -> bool:
    """True when this session is signed in as staff; otherwise render the sign-in form (or say it is off)."""
    if not staff_configured():
        st.info(NOT_CONFIGURED)
        return False
    if is_staff():
        return True
    _sign_in_form(key)
    return False


def sign_out_button(key: str = "staff") -> None:
    """A small 'Sign out' control for pages that show staff features."""
    if is_staff() and st.button("Sign out", key=f"{key}_sign_out", icon=":material/logout:"):
        sign_out()
        st.rerun()
