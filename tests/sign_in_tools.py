"""Test helpers for the sign-in failures table: move recorded failures into the past, read them back."""

from __future__ import annotations


def age_failures(db, seconds: float) -> None:
    """Pretend every recorded failure happened `seconds` earlier (a lock or a window running out)."""
    with db.connection() as conn:
        conn.execute("UPDATE staff_sign_in_failures SET failed_at = failed_at - make_interval(secs => %s)",
                     (float(seconds),))


def failures_by_client(db) -> dict[str, int]:
    with db.connection() as conn:
        return dict(conn.execute("SELECT client, count(*) FROM staff_sign_in_failures GROUP BY client").fetchall())
