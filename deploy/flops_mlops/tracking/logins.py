"""Logins: repeated failures are throttled, and every password check leaves one audit line in the server's log.

MLflow answers every wrong password with a 401, however many come: a client may guess for as long as it likes, at
the cost of one password hash check each (0.5 s and more of the server's time on a busy node). So:

- **Throttle.** Failed logins are counted per user name and per client address. From the USER_LIMIT-th failure
  of a user name (ADDRESS_LIMIT-th of an address) on, a login for that name (from that address) is answered 429
  with a Retry-After, without a password check: FIRST_DELAY seconds, doubled by every further attempt, at most
  MAX_DELAY. An attempt while blocked counts as a failure too, so a client that keeps trying keeps waiting.
  The counts are forgotten WINDOW seconds after their last failure; a successful login resets its user name's
  (not its address's) count. Only requests that carry a login are counted and throttled: routes without a
  login (/health, static files) and anonymous requests (which get MLflow's 401) are left alone.
- **Audit.** Each password check writes one line: time, tenant, user name, client address and result (ok,
  failed, throttled). A checked login is remembered for the login cache's time (app.AUTH_CACHE_SECONDS), so a
  client's requests within it are not checked again and write no line. The password and the Authorization
  header are never written; the user name is quoted with its control characters escaped.
- **One user read per request.** MLflow's login and admin checks read the request's user several times; within
  a GET or HEAD request the auth database's row is read once (read_users_once_per_request), afresh each request.

Where: app.py puts LoginThrottle (ASGI) around MLflow's app, and watch_password_checks() wraps the auth store's
password check, which both of MLflow's login paths (Flask and FastAPI routes) call; it reports the outcome of the
request's check back to LoginThrottle. Counts live in the server's process: with tracking.workers above 1, each
worker counts alone. A user name under attack stays blocked for everyone while the attack goes on, and up to
MAX_DELAY seconds after it stops.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import json
import logging
import math
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

USER_LIMIT = 5  # failed logins of one user name before it is throttled
ADDRESS_LIMIT = 20  # of one client address (many users may share one: a NAT, an office)
FIRST_DELAY = 1.0  # seconds, at the limit
MAX_DELAY = 60.0  # seconds: the delay doubles with every further attempt, up to this
WINDOW = 15 * 60.0  # seconds after its last failure that a count is forgotten
CAPACITY = 10_000  # user names and addresses tracked at most (an attacker may invent names); oldest go first
MAX_NAME_SHOWN = 100  # characters of a user name in an audit line

log = logging.getLogger("flops_mlops.logins")


@dataclass
class Attempt:
    """One request's login: the user name it carries, and the outcome of its password check (None: none ran).

    ``users``: the auth database's user rows this request has read, by user name (read_users_once_per_request);
    None on requests that may change users (anything but GET and HEAD), which read them every time."""

    user: str
    succeeded: bool | None = None
    users: dict | None = None


CURRENT: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar("flops_login_attempt", default=None)


@dataclass
class Count:
    failures: int
    last: float  # time.monotonic() of the last failure


class Ledger:
    """Failure counts per key ("user:<name>", "address:<ip>"), each forgotten ``window`` seconds after its last."""

    def __init__(self, user_limit: int = USER_LIMIT, address_limit: int = ADDRESS_LIMIT,
                 first_delay: float = FIRST_DELAY, max_delay: float = MAX_DELAY, window: float = WINDOW,
                 capacity: int = CAPACITY):
        self.limits = {"user": user_limit, "address": address_limit}
        self.first_delay, self.max_delay, self.window, self.capacity = first_delay, max_delay, window, capacity
        self.counts: OrderedDict[str, Count] = OrderedDict()

    def _live(self, key: str, now: float) -> Count | None:
        count = self.counts.get(key)
        if count is not None and now - count.last > self.window:
            del self.counts[key]
            return None
        return count

    def delay(self, kind: str, failures: int) -> float:
        """How long a key with ``failures`` is blocked after its last one (0: not blocked)."""
        over = failures - self.limits[kind]
        if over < 0:
            return 0.0
        return min(self.first_delay * 2 ** min(over, 64), self.max_delay)

    def wait(self, keys: dict[str, str], now: float) -> float:
        """Seconds until a login with these keys ({kind: key}) may be checked again (0: now)."""
        waits = [0.0]
        for kind, key in keys.items():
            if (count := self._live(key, now)) is not None:
                waits.append(count.last + self.delay(kind, count.failures) - now)
        return max(waits)

    def failed(self, keys: dict[str, str], now: float) -> None:
        for key in keys.values():
            count = self._live(key, now) or Count(0, now)
            count.failures += 1
            count.last = now
            self.counts[key] = count
            self.counts.move_to_end(key)
        while len(self.counts) > self.capacity:
            self.counts.popitem(last=False)

    def forget(self, key: str) -> None:
        self.counts.pop(key, None)


def basic_user(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The user name of a request's basic-auth login (None without one, or when it cannot be read)."""
    for name, value in headers:
        if name.lower() != b"authorization":
            continue
        scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, colon, _ = decoded.partition(":")
        return user if colon else None
    return None


def audit_line(tenant: str, user: str, address: str, result: str, extra: str = "") -> str:
    """One login's audit line (no password, no header: the user name quoted, control characters escaped)."""
    shown = user if len(user) <= MAX_NAME_SHOWN else user[:MAX_NAME_SHOWN] + "..."
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (f"login audit: time={stamp} tenant={tenant} user={json.dumps(shown)} address={address} "
            f"result={result}{' ' + extra if extra else ''}")


def whole_seconds(wait: float) -> int:
    """A wait as Retry-After gives it: whole seconds, at least 1 (rounded first: clock sums are inexact)."""
    return max(1, math.ceil(round(wait, 3)))


def too_many(wait: float) -> tuple[dict, bytes]:
    seconds = whole_seconds(wait)
    body = json.dumps({"error_code": "RESOURCE_EXHAUSTED",
                       "message": f"too many failed logins for this user name or from this address; try again in "
                                  f"{seconds} s (every attempt until then doubles the wait)"}).encode()
    start = {"type": "http.response.start", "status": 429,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         (b"retry-after", str(seconds).encode())]}
    return start, body


class LoginThrottle:
    """ASGI wrapper: a login of a blocked user name or address gets a 429; each password check is counted and
    audited (its outcome comes from watch_password_checks())."""

    def __init__(self, app, tenant: str, is_open_route: Callable[[str], bool], ledger: Ledger | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.app = app
        self.tenant = tenant or "-"
        self.is_open_route = is_open_route
        self.ledger = ledger or Ledger()
        self.clock = clock

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.is_open_route(scope.get("path", "")):
            return await self.app(scope, receive, send)
        user = basic_user(scope.get("headers", []))
        if user is None:
            return await self.app(scope, receive, send)
        address = (scope.get("client") or ("unknown",))[0]
        keys = {"user": f"user:{user}", "address": f"address:{address}"}
        now = self.clock()
        if self.ledger.wait(keys, now) > 0:
            self.ledger.failed(keys, now)  # trying while blocked: the wait grows
            wait = self.ledger.wait(keys, now)
            log.warning(audit_line(self.tenant, user, address, "throttled", f"retry_after={whole_seconds(wait)}"))
            start, body = too_many(wait)
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        attempt = Attempt(user, users={} if scope.get("method") in ("GET", "HEAD") else None)
        token = CURRENT.set(attempt)
        try:
            await self.app(scope, receive, send)
        finally:
            CURRENT.reset(token)
            self.record(attempt, keys, address)

    def record(self, attempt: Attempt, keys: dict[str, str], address: str) -> None:
        if attempt.succeeded is None:
            return  # no password check ran: a login MLflow remembered, or a request refused before the check
        if attempt.succeeded:
            self.ledger.forget(keys["user"])
            log.info(audit_line(self.tenant, attempt.user, address, "ok"))
        else:
            self.ledger.failed(keys, self.clock())
            log.warning(audit_line(self.tenant, attempt.user, address, "failed"))


def remember_checked_passwords(store, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
    """Wrap the auth store's password check: a login that passed is remembered for ``seconds`` together with the
    user's stored password hash, which is read from the auth database on every check (one indexed SELECT).

    So the costly hash check runs once per login and ``seconds``, and yet a password changed or a user deleted
    through any instance of the tenant's server (they share the auth database) is refused by all of them at once:
    the stored hash no longer matches the remembered one, or the user is gone. The remembered key is an HMAC of
    the password with a per-process random key, never the password.
    """
    import hashlib
    import hmac
    import secrets as random
    import threading

    from werkzeug.security import check_password_hash

    key = random.token_bytes(32)
    remembered: dict[tuple[str, bytes, str], float] = {}
    lock = threading.Lock()

    def authenticate_user(username, password, *args, **kwargs):
        row = user_row(store, username)
        stored = row.password_hash if row is not None else None
        if not stored:
            return False
        entry = (username, hmac.new(key, password.encode("utf-8"), hashlib.sha256).digest(), stored)
        now = clock()
        with lock:
            if remembered.get(entry, 0.0) > now:
                return True
        if not check_password_hash(stored, password):
            return False
        with lock:
            if len(remembered) > 10000:
                remembered.clear()
            remembered[entry] = now + seconds
        return True

    store.authenticate_user = authenticate_user


USER_ROW = "SELECT id, username, password_hash, is_admin FROM users WHERE username = :username"


def user_row(store, username: str):
    """The auth database's row of ``username`` (None: no such user), read with one indexed SELECT; within one
    GET or HEAD request, read once and then taken from the request's Attempt (read_users_once_per_request)."""
    import sqlalchemy

    attempt = CURRENT.get()
    users = attempt.users if attempt is not None else None
    if users is not None and username in users:
        return users[username]
    with store.engine.connect() as conn:
        row = conn.execute(sqlalchemy.text(USER_ROW), {"username": username}).first()
    if users is not None:
        users[username] = row
    return row


def read_users_once_per_request(store) -> None:
    """Wrap the auth store's get_user: within one GET or HEAD request, a user is read from the auth database once.

    MLflow's login checks read the user several times per request: the password check, then the user again (is it
    an admin?) through an ORM session each time; a proxied model download is ten such requests. The row the
    request's password check read (user_row) answers them. Every request still reads it afresh, so a user changed,
    demoted or deleted through any instance of the tenant's server counts from the next request on, as before.
    Requests that may change users (POST, PATCH, DELETE) and calls outside a request read it every time."""
    from mlflow.server.auth.entities import User

    get_user = store.get_user

    def once(username, *args, **kwargs):
        attempt = CURRENT.get()
        if attempt is None or attempt.users is None or args or kwargs:
            return get_user(username, *args, **kwargs)
        row = user_row(store, username)
        if row is None:
            return get_user(username)  # MLflow's own answer for an unknown user
        return User(id_=row.id, username=row.username, password_hash=row.password_hash, is_admin=bool(row.is_admin))

    store.get_user = once


def watch_password_checks(store) -> None:
    """Wrap the auth store's password check: the first check of a request's own user name reports its outcome to
    the request's Attempt (checks outside a request, or of another name, are left alone)."""
    check = store.authenticate_user

    def authenticate_user(username, password, *args, **kwargs):
        ok = check(username, password, *args, **kwargs)
        attempt = CURRENT.get()
        if attempt is not None and attempt.succeeded is None and username == attempt.user:
            attempt.succeeded = bool(ok)
        return ok

    store.authenticate_user = authenticate_user


def audit_to(stream=None) -> None:
    """The audit lines go to the server's log (its stderr), whatever logging MLflow and uvicorn set up."""
    if log.handlers:
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
