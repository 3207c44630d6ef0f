"""Staff sign-in throttling, kept in the database: failures per client address and across all clients.

The state lives in PostgreSQL (table staff_sign_in_failures), never in a browser session, so a reload, a new
session or a second dashboard process counts against the same address. An attempt is recorded as a failure
*before* its password is checked and cleared if it was right: concurrent attempts from one address are
counted one by one (a per-address advisory lock held for one short transaction), so a burst of parallel
guesses cannot slip past the limit. Nothing here waits while holding a lock.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .db import Database, named_queries

UNKNOWN = "unknown"  # clients whose address is unknown (localhost, tests) share one counter


@dataclass(frozen=True)
class Policy:
    """When a client address is locked.

    With the defaults one address gets 5 quick guesses, then one after 60 s, 120 s, 240 s, ... up to one per
    15 min: about 190 guesses a day at most. Under pressure (50 failures from all addresses in 15 min, i.e.
    a distributed attack) every address is locked from its first failure on, about 110 a day each. There is
    deliberately no global lock: it would let anyone lock the real staff out. A correct password from an
    address that is not locked always gets in, attack or not.
    """

    lock_after: int = 5  # failures of one address within window_s before it is locked
    lock_s: float = 60.0  # the first lock; doubles with every further failure ...
    max_lock_s: float = 900.0  # ... up to 15 min
    # Longer than a few max_lock_s, so that at the cap the earlier failures are still counted.
    window_s: float = 3600.0
    pressure_after: int = 50  # failures from all addresses within pressure_window_s that mean an attack
    pressure_window_s: float = 900.0

    def lock_for(self, failures: int, under_pressure: bool = False) -> float:
        """Seconds an address stays locked after its latest failure, given its recent failures (0: not locked)."""
        threshold = 1 if under_pressure else self.lock_after
        if failures < threshold:
            return 0.0
        return min(self.max_lock_s, self.lock_s * 2 ** (failures - threshold))


@dataclass(frozen=True)
class Admission:
    """May this attempt have its password checked? If not, for how long the address is still locked."""

    allowed: bool
    retry_after_s: float = 0.0  # refused: seconds until the lock ends
    failures: int = 0  # allowed: the address's recent failures, this attempt included (should it be wrong)
    lock_s: float = 0.0  # allowed: how long the address is locked if this attempt is wrong (0: not locked)


def client_key(address: str | None) -> str:
    """The key an address's failures are counted under; an IPv6 address by its /64, one subscriber's usual
    allocation, so that rotating through it gains nothing. None or an unreadable address gives UNKNOWN."""
    try:
        ip = ipaddress.ip_address((address or "").split("%")[0].strip())  # "%eth0": an IPv6 zone
    except ValueError:
        return UNKNOWN
    if ip.version == 6:
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def admit(db: Database, client: str, policy: Policy = Policy()) -> Admission:
    """Refuse a locked client at once; otherwise record this attempt as a failure (`succeeded` clears it).

    Per-address accounting is serialised by an advisory lock for this transaction only; old rows are pruned.
    """
    queries = named_queries()
    with db.connection() as conn:
        conn.execute(queries["lock-sign-in-client"], {"client": client})
        failures, since_last_s, everyone = conn.execute(queries["sign-in-failure-counts"], {
            "client": client, "window_s": policy.window_s, "global_window_s": policy.pressure_window_s,
        }).fetchone()
        under_pressure = everyone >= policy.pressure_after
        locked_for = policy.lock_for(failures, under_pressure)
        if since_last_s is not None and since_last_s < locked_for:
            return Admission(False, retry_after_s=locked_for - since_last_s)
        conn.execute(queries["record-sign-in-failure"], {"client": client})
        conn.execute(queries["prune-sign-in-failures"], {"keep_s": max(policy.window_s, policy.pressure_window_s)})
    return Admission(True, failures=failures + 1, lock_s=policy.lock_for(failures + 1, under_pressure))


def succeeded(db: Database, client: str) -> None:
    """The client signed in: its failures (and its attempts still being checked) no longer count."""
    db.query("clear-sign-in-failures", {"client": client}, rows=False)
