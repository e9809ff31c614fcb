"""The login throttle's arithmetic (tracking/logins.py): when a user name or address is blocked, for how long, and
what an audit line holds."""

from __future__ import annotations

import base64

import pytest
from flops_mlops.tracking import logins

KEYS = {"user": "user:alice", "address": "address:10.0.0.1"}


def test_the_wait_starts_at_the_limit_doubles_per_attempt_is_capped_and_is_forgotten_after_the_window():
    ledger = logins.Ledger(user_limit=3, address_limit=100, first_delay=1, max_delay=8, window=100)
    for _ in range(2):
        ledger.failed(KEYS, 0)
    assert ledger.wait(KEYS, 0) == 0  # under the limit
    waits = []
    for _ in range(6):
        ledger.failed(KEYS, 10)
        waits.append(ledger.wait(KEYS, 10))
    assert waits == [1, 2, 4, 8, 8, 8]
    assert ledger.wait(KEYS, 17) == 1 and ledger.wait(KEYS, 18) == 0
    assert ledger.wait(KEYS, 111) == 0 and "user:alice" not in ledger.counts  # the window passed


def test_a_success_forgets_the_user_name_not_the_address():
    ledger = logins.Ledger(user_limit=1, address_limit=1, first_delay=5, max_delay=5, window=100)
    ledger.failed(KEYS, 0)
    ledger.forget(KEYS["user"])
    assert ledger.wait({"user": "user:alice"}, 1) == 0
    assert ledger.wait({"address": KEYS["address"]}, 1) == 4


def test_invented_user_names_cannot_grow_the_ledger_without_bound():
    ledger = logins.Ledger(capacity=50)
    for n in range(500):
        ledger.failed({"user": f"user:guess{n}"}, n)
    assert len(ledger.counts) == 50


@pytest.mark.parametrize("header, user", [
    (b"Basic " + base64.b64encode(b"alice:pw:with:colons"), "alice"),
    (b"basic " + base64.b64encode(b":pw"), ""),
    (b"Basic " + base64.b64encode(b"no-colon"), None),
    (b"Basic !!!", None),
    (b"Bearer abc", None),
])
def test_the_user_name_of_a_basic_login(header, user):
    assert logins.basic_user([(b"Authorization", header)]) == user


def test_an_audit_line_quotes_the_user_name_and_escapes_line_breaks():
    line = logins.audit_line("acme", "eve\nlogin audit: forged", "10.0.0.1", "failed")
    assert "\n" not in line and 'user="eve\\nlogin audit: forged"' in line
    assert line.startswith("login audit: time=") and "tenant=acme" in line and line.endswith("result=failed")
