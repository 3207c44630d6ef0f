"""Sign-in throttling against the real database: per-address locks, the global pressure rule, concurrency."""

from __future__ import annotations

import threading

import pytest

from raiox_core import sign_in
from raiox_core.sign_in import Policy, admit, client_key, succeeded
from tests.sign_in_tools import age_failures, failures_by_client

POLICY = Policy()  # the defaults the dashboard uses


def fail(db, client: str, times: int, policy: Policy = POLICY) -> list[sign_in.Admission]:
    return [admit(db, client, policy) for _ in range(times)]


@pytest.mark.parametrize("address, key", [
    ("203.0.113.7", "203.0.113.7"),
    (" 203.0.113.7 ", "203.0.113.7"),
    ("::ffff:203.0.113.7", "203.0.113.7"),  # an IPv4 client seen through an IPv6 socket
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::9%eth0", "2001:db8:1:2::/64"),  # rotating within one /64 is one client
    (None, sign_in.UNKNOWN), ("", sign_in.UNKNOWN), ("not an address", sign_in.UNKNOWN),
])
def test_client_key(address, key):
    assert client_key(address) == key


def test_lock_grows_from_the_threshold_and_is_capped():
    assert [POLICY.lock_for(n) for n in range(5)] == [0.0] * 5
    assert [POLICY.lock_for(n) for n in range(5, 9)] == [60.0, 120.0, 240.0, 480.0]
    assert POLICY.lock_for(9) == POLICY.lock_for(40) == 900.0
    assert POLICY.lock_for(0, under_pressure=True) == 0.0
    assert POLICY.lock_for(1, under_pressure=True) == 60.0


def test_fifth_failure_locks_the_address_for_every_later_attempt(db):
    first = fail(db, "198.51.100.1", 5)
    assert all(a.allowed for a in first)
    assert [a.failures for a in first] == [1, 2, 3, 4, 5]
    assert [a.lock_s for a in first] == [0, 0, 0, 0, 60.0]  # the fifth, if wrong, locks for a minute
    refused = admit(db, "198.51.100.1")  # any later call, from any session or process: state is in the DB
    assert not refused.allowed and 55 < refused.retry_after_s <= 60
    assert failures_by_client(db) == {"198.51.100.1": 5}  # refusals are not counted
    assert admit(db, "198.51.100.2").allowed  # another address is not affected


def test_lock_ends_then_doubles_and_a_success_clears_the_address(db):
    fail(db, "198.51.100.1", 5)
    age_failures(db, 61)
    again = admit(db, "198.51.100.1")
    assert again.allowed and again.failures == 6 and again.lock_s == 120.0
    assert not admit(db, "198.51.100.1").allowed
    age_failures(db, 121)
    assert admit(db, "198.51.100.1").allowed
    succeeded(db, "198.51.100.1")
    assert failures_by_client(db) == {}
    assert admit(db, "198.51.100.1").failures == 1


def test_failures_older_than_the_window_no_longer_count_and_are_pruned(db):
    fail(db, "198.51.100.1", 4)
    age_failures(db, POLICY.window_s + 1)
    fresh = admit(db, "198.51.100.2")
    assert fresh.allowed and fresh.failures == 1
    assert failures_by_client(db) == {"198.51.100.2": 1}  # the old rows went


def test_pressure_locks_each_address_after_one_failure_but_never_everyone(db):
    policy = Policy(pressure_after=12)
    for n in range(4):
        fail(db, f"192.0.2.{n}", 3, policy)  # 12 failures spread over 4 addresses: none of them locked
    newcomer = admit(db, "192.0.2.100", policy)
    assert newcomer.allowed and newcomer.failures == 1 and newcomer.lock_s == 60.0
    assert not admit(db, "192.0.2.100", policy).allowed
    assert not admit(db, "192.0.2.0", policy).allowed  # 3 failures are now enough to be locked
    assert admit(db, "192.0.2.200", policy).allowed  # an address without failures is still let through


def test_concurrent_attempts_from_one_address_are_counted_one_by_one(db):
    """A burst of parallel guesses gets exactly `lock_after` password checks, not one per thread."""
    results: list[sign_in.Admission] = []
    start = threading.Barrier(16)

    def guess():
        start.wait()
        results.append(admit(db, "198.51.100.9"))

    threads = [threading.Thread(target=guess) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(a.allowed for a in results) == POLICY.lock_after
    assert sorted(a.failures for a in results if a.allowed) == [1, 2, 3, 4, 5]
