"""Logins on the embedded stack (tracking/logins.py): a run of wrong passwords is answered 429 with a growing
Retry-After; the right password is refused while blocked and accepted after; another user (from another address)
is not held up by the user's block; one client address trying many user names is blocked as an address; and every
password check leaves an audit line in the server's log, with no secret in it."""

from __future__ import annotations

import socket
import time

import conftest
import pytest
import requests
from conftest import client_from

pytestmark = [pytest.mark.services, pytest.mark.timeout(900)]

TENANT = "acme"
ATTEMPTS = 200  # what the tester sent
VICTIM, OTHER = "alice", "bob"
PASSWORD = {VICTIM: "alice-right-password-1", OTHER: "bob-right-password-22"}


def loopback_aliases_work() -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.7", 0))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from flops_mlops.processes import ManagedProcess

    if not loopback_aliases_work():
        pytest.skip("this host cannot send from 127.0.0.7 (needed to tell client addresses apart)")
    folder = tmp_path_factory.mktemp("logins")
    stack = conftest.TestStack.create("local", folder, [TENANT])
    stack.up()
    try:
        for user, password in PASSWORD.items():
            password_file = folder / f"{user}.pw"
            password_file.write_text(password + "\n", encoding="utf-8")
            stack.cli("user", "add", "--tenant", TENANT, "--name", user, "--password-file", str(password_file),
                      check=True)
        config = stack.load()
        process = ManagedProcess(f"tracking-{TENANT}", config.state_dir)
        assert process.recorded() is not None, "the tracking server is not running"
        yield config.tracking_uri(config.tenant(TENANT)), stack, process
    finally:
        stack.cli("down", "--purge")


def whoami(uri: str, session: requests.Session, user: str, password: str) -> requests.Response:
    return session.get(f"{uri}/api/2.0/mlflow/users/current", auth=(user, password), timeout=60)


def test_wrong_passwords_get_429_with_a_growing_retry_after_and_the_right_one_works_after(server):
    uri, stack, process = server
    # The attacker spreads its attempts over many addresses: only the user name's count can stop it.
    answers = [whoami(uri, client_from(f"127.0.1.{n % 250 + 1}"), VICTIM, f"wrong-{n}") for n in range(ATTEMPTS)]
    codes = [a.status_code for a in answers]
    assert set(codes) <= {401, 429}, codes
    assert codes[:5] == [401] * 5, codes[:10]  # five failures are answered as usual
    refused = [a for a in answers if a.status_code == 429]
    assert len(refused) >= ATTEMPTS - 10, f"only {len(refused)} of {ATTEMPTS} wrong passwords were answered 429"
    delays = [int(a.headers["Retry-After"]) for a in refused]
    assert delays == sorted(delays) and delays[-1] > delays[0], f"Retry-After did not grow: {delays[:12]}..."
    assert delays[-1] <= 60, delays[-1]  # capped
    assert "try again in" in refused[0].json()["message"]
    print(f"{ATTEMPTS} wrong passwords: {codes.count(401)} answered 401, {len(refused)} answered 429; "
          f"Retry-After {delays[0]} .. {delays[-1]} s")

    # Another user, from another address, logs in as usual while the victim's name is blocked.
    assert whoami(uri, client_from("127.0.0.5"), OTHER, PASSWORD[OTHER]).status_code == 200

    # The victim's right password is refused while blocked (it is not even checked) ...
    blocked = whoami(uri, client_from("127.0.0.6"), VICTIM, PASSWORD[VICTIM])
    assert blocked.status_code == 429, blocked.text
    wait = int(blocked.headers["Retry-After"])
    # ... and accepted once the wait is over.
    time.sleep(wait + 1)
    accepted = whoami(uri, client_from("127.0.0.6"), VICTIM, PASSWORD[VICTIM])
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["user"]["username"] == VICTIM
    # The success reset the user name's count: a wrong password is a plain 401 again.
    assert whoami(uri, client_from("127.0.0.6"), VICTIM, "wrong-again").status_code == 401


def test_one_address_trying_many_user_names_is_blocked_and_other_addresses_are_not(server):
    uri, _, _ = server
    attacker = client_from("127.0.0.9")
    codes = [whoami(uri, attacker, f"guess{n}", "wrong-password").status_code for n in range(30)]
    assert codes[:20] == [401] * 20 and 429 in codes[20:], codes
    assert whoami(uri, attacker, OTHER, PASSWORD[OTHER]).status_code == 429  # the address is blocked
    assert whoami(uri, client_from("127.0.0.10"), OTHER, PASSWORD[OTHER]).status_code == 200


def test_every_login_leaves_an_audit_line_without_a_secret(server):
    uri, stack, process = server
    text = process.log_file.read_text(encoding="utf-8", errors="replace")
    lines = [line for line in text.splitlines() if line.startswith("login audit:")]
    failed = [line for line in lines if f'user="{VICTIM}"' in line and "result=failed" in line]
    throttled = [line for line in lines if f'user="{VICTIM}"' in line and "result=throttled" in line]
    ok = [line for line in lines if f'user="{VICTIM}"' in line and "result=ok" in line]
    assert len(failed) >= 5 and len(throttled) >= ATTEMPTS - 10 and ok, (len(failed), len(throttled), len(ok))
    assert all(f"tenant={TENANT}" in line and "address=127." in line and "time=" in line for line in lines)
    assert any(f'user="{OTHER}" address=127.0.0.5 result=ok' in line for line in lines)
    secrets = [value for value in stack.secrets().values.values() if len(value) >= 8] + list(PASSWORD.values())
    secrets += [f"wrong-{n}" for n in range(ATTEMPTS)]
    leaked = [s for s in secrets if any(s in line for line in lines)]
    assert not leaked, f"{len(leaked)} secrets in the audit lines"
    assert not any("Basic " in line or "authorization" in line.lower() for line in lines)
