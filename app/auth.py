"""Staff access: one shared password (RAIOX_STAFF_PASSWORD), compared in constant time, slowed on failure.

Ingestion, relabelling and deletion sit behind `require_staff()`. Without a configured password those
features are off: the dashboard is never open by default. The password itself is never stored in the
session, logged or shown; the session keeps a digest of it, so a changed password signs everyone out.
Failed attempts are counted in the database per client address (raiox_core/sign_in.py), never in the
browser session: a reload or a new session does not reset them.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from functools import lru_cache

import streamlit as st

from raiox_dashboard.resources import get_db, get_settings
from raiox_dashboard.widgets import show_error
from raiox_core import sign_in
from raiox_core.db import Database
from raiox_core.errors import RaioxError

# A random salt per process: the digests are only ever compared within this process.
_SALT = secrets.token_bytes(16)
# scrypt at these costs takes ~50 ms and 16 MiB: cheap for one sign-in, expensive for guessing in bulk.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}

# Wrong passwords: the n-th recent failure of an address waits BASE_DELAY_S * 2**(n-1) seconds (at most
# MAX_DELAY_S) before the answer. Only a courtesy brake on a single guessing session (a reload skips it):
# the limit is POLICY's lock, recorded before the password is checked. The wait holds no lock, so other
# sessions sign in meanwhile. Module constants so that tests can shrink them.
BASE_DELAY_S = 0.5
MAX_DELAY_S = 4.0
POLICY = sign_in.Policy()

SIGNED_IN = "raiox_staff_digest"  # session key: digest of the password the session signed in with
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
    """Seconds to wait after an address's n-th recent wrong password."""
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


def client_address() -> str:
    """This session's client key. Streamlit reports no address for some loopback connections and none in
    AppTest: those share the key sign_in.UNKNOWN. Behind a reverse proxy every client has the proxy's
    address (forwarded headers are not trusted: anyone can send them)."""
    return sign_in.client_key(st.context.ip_address)


def verify_attempt(attempt: str, configured: str, client: str, db: Database) -> str | None:
    """None when `attempt` is right and `client` is not locked, else a sentence saying why not.

    A locked client is refused without its password being checked. Touches no session state.
    """
    admission = sign_in.admit(db, client, POLICY)
    if not admission.allowed:
        return f"Too many wrong passwords from this address: try again in {math.ceil(admission.retry_after_s)} s."
    if check_password(attempt, configured):
        sign_in.succeeded(db, client)
        return None
    _sleep(failure_delay(admission.failures))
    if admission.lock_s:
        return ("Wrong staff password. Too many attempts: sign-in from this address is paused for "
                f"{admission.lock_s:g} s.")
    return "Wrong staff password."


def attempt_sign_in(attempt: str) -> str | None:
    """Check one attempt and sign the session in; None on success, else a sentence saying why not.

    Raises RaioxError when the database cannot record the attempt: without it there is no sign-in.
    """
    configured = get_settings().staff_password
    if not configured:
        return NOT_CONFIGURED
    error = verify_attempt(attempt, configured, client_address(), get_db())
    if error is None:
        st.session_state[SIGNED_IN] = _configured_digest(configured)
    return error


def _sign_in_form(key: str) -> None:
    # clear_on_submit: the typed password does not stay in the widget (or the session) after the attempt.
    with st.form(f"{key}_sign_in", clear_on_submit=True):
        st.markdown("**Staff sign-in**")
        attempt = st.text_input("Staff password", type="password", key=f"{key}_password", autocomplete="current-password")
        submitted = st.form_submit_button("Sign in")
    if submitted:
        try:
            error = attempt_sign_in(attempt or "")
        except RaioxError as exc:  # e.g. the database is down: refused, and the page says why
            show_error(exc)
            return
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
