"""A client of the Oakestra root orchestrator's system manager REST API (the calls push and undeploy need).

Quirks of the API handled here, so callers see plain Python values:
- bodies that are a JSON *string* encoding the real JSON are decoded twice;
- access tokens expire (10 minutes), and a restart of older releases invalidates them: a rejected token is
  answered by one refresh with the refresh token, then by a new login, and the call is repeated once;
- every error becomes an OakestraError naming the call, the HTTP status and the body, with any secret
  value of this deployment replaced by ***.
Ids that come from responses are checked before they are put into a URL path.

The user id: ``GET /api/applications/<id>`` wants the user's database id, the ``_id.$oid`` of
``GET /api/user/<username>``; the token's subject and an application's ``userId`` hold the user NAME, which
that call answers with 401 (root_orchestrator/system-manager-python, applications and users blueprints).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

import requests

from ..configuration.schema import ConfigError
from ..configuration.secrets import redact as redact_secrets
from ..processes import StackError

ID_PATTERN = re.compile(r"^[A-Za-z0-9]{1,64}$")
USER_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
BODY_LIMIT = 2000


class OakestraError(StackError):
    """A failed API call (exit 1): ``call`` is "METHOD path", ``status`` the HTTP status (None: no answer)."""

    def __init__(self, call: str, status: int | None, body: str):
        self.call, self.status, self.body = call, status, body
        where = f"HTTP {status}" if status is not None else "no answer"
        super().__init__(f"{call}: {where}: {body}")


def check_url(url: str) -> str:
    """The orchestrator's base URL, http(s)://host[:port], without a trailing slash; ConfigError otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(f"--orchestrator: {url!r} is not a valid URL") from None
    if (parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password
            or parts.query or parts.fragment or parts.path not in ("", "/")
            or not re.fullmatch(r"^[A-Za-z0-9.:\[\]-]+$", parts.netloc)):
        raise ConfigError(f"--orchestrator: {url!r} must be http(s)://host[:port] of the root orchestrator's "
                          "system manager (no credentials, path or query), for example http://10.0.0.1:10000")
    del port  # parsed only to reject a bad port
    return f"{parts.scheme}://{parts.netloc}"


def check_id(value: Any, what: str) -> str:
    """An id from a response, checked before it goes into a URL path."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise OakestraError(what, None, f"the orchestrator returned {value!r}, which is not a plain id "
                                        "(letters and digits)")
    return value


def decode(text: str) -> Any:
    """A response body: JSON, decoded a second time when it is a JSON string of JSON; raw text otherwise."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


class Client:
    """One logged-in session with the system manager."""

    def __init__(self, url: str, username: str, password: str, timeout: float = 30.0,
                 redact: list[str] | None = None):
        self.url = check_url(url)
        self.username = username
        self._password = password
        self.timeout = timeout
        self._redact = [*(redact or []), password]
        self._session = requests.Session()
        self._token: str | None = None
        self._refresh_token: str | None = None

    # --- transport ---

    def _clean(self, text: str) -> str:
        text = redact_secrets(text, self._redact)
        return text if len(text) <= BODY_LIMIT else text[:BODY_LIMIT] + f"... ({len(text)} characters)"

    def _send(self, method: str, path: str, body: Any = None, token: str | None = None) -> requests.Response:
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            return self._session.request(method, self.url + path, json=body, headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            raise OakestraError(f"{method} {path}", None, self._clean(f"{type(exc).__name__}: {exc}")) from None

    def _fail(self, method: str, path: str, response: requests.Response) -> OakestraError:
        return OakestraError(f"{method} {path}", response.status_code, self._clean(response.text.strip()))

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """An authenticated call; returns the decoded body, raises OakestraError on any status >= 300."""
        if self._token is None:
            self.login()
        response = self._send(method, path, body, self._token)
        if _token_rejected(response):
            self._renew()
            response = self._send(method, path, body, self._token)
        if response.status_code >= 300:
            raise self._fail(method, path, response)
        return decode(response.text)

    # --- authentication ---

    def login(self) -> None:
        path = "/api/auth/login"
        response = self._send("POST", path, {"username": self.username, "password": self._password})
        if response.status_code != 200:
            raise self._fail("POST", path, response)
        data = decode(response.text)
        if not isinstance(data, dict) or not isinstance(data.get("token"), str):
            raise OakestraError(f"POST {path}", response.status_code, "the answer holds no token")
        self._token, self._refresh_token = data["token"], data.get("refresh_token")

    def _renew(self) -> None:
        """After a 401: a new access token from the refresh token, or else a new login."""
        if self._refresh_token:
            response = self._send("POST", "/api/auth/refresh", None, self._refresh_token)
            data = decode(response.text) if response.status_code == 200 else None
            if isinstance(data, dict) and isinstance(data.get("token"), str):
                self._token = data["token"]
                return
        self.login()

    # --- the user ---

    def user_id(self) -> str:
        """The logged-in user's database id: ``_id.$oid`` of GET /api/user/<username>."""
        path = f"/api/user/{self.username}"
        record = self.call("GET", path)
        oid = record.get("_id") if isinstance(record, dict) else None
        value = oid.get("$oid") if isinstance(oid, dict) else oid
        return check_id(value, f"GET {path}: _id")

    # --- applications ---

    def create_application(self, sla: dict) -> list[dict]:
        """Create an application; the answer lists all of the user's applications."""
        return _records(self.call("POST", "/api/application/", sla), "POST /api/application/")

    def applications(self, user_id: str) -> list[dict]:
        """The user's applications; ``user_id`` is the database id (``user_id()``), not the name."""
        path = f"/api/applications/{check_id(user_id, 'user id')}"
        try:
            return _records(self.call("GET", path), f"GET {path}")
        except OakestraError as exc:
            if exc.status == 401:  # after a fresh token: the id is not this user's
                raise OakestraError(exc.call, 401, f"{exc.body} (the orchestrator does not take {user_id} as the "
                                                   f"database id of user {self.username})") from None
            raise

    def delete_application(self, app_id: str) -> None:
        self.call("DELETE", f"/api/application/{check_id(app_id, 'applicationID')}")

    # --- services and instances ---

    def append_services(self, sla: dict) -> dict:
        result = self.call("POST", "/api/service/", sla)
        return result if isinstance(result, dict) else {}

    def services(self, app_id: str) -> list[dict]:
        path = f"/api/services/{check_id(app_id, 'applicationID')}"
        return _records(self.call("GET", path), f"GET {path}")

    def service(self, service_id: str) -> dict:
        path = f"/api/service/{check_id(service_id, 'microserviceID')}"
        record = self.call("GET", path)
        if not isinstance(record, dict):
            raise OakestraError(f"GET {path}", 200, "expected a service record")
        return record

    def deploy_instance(self, service_id: str) -> None:
        self.call("POST", f"/api/service/{check_id(service_id, 'microserviceID')}/instance")

    def undeploy_instance(self, service_id: str, number: int) -> None:
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise OakestraError("instance number", None, f"the orchestrator returned {number!r}")
        self.call("DELETE", f"/api/service/{check_id(service_id, 'microserviceID')}/instance/{number}")

    def delete_service(self, service_id: str) -> None:
        self.call("DELETE", f"/api/service/{check_id(service_id, 'microserviceID')}")


def _token_rejected(response: requests.Response) -> bool:
    """401 (missing or expired token), or the JWT layer's 422 {"msg": ...} for a token signed before a restart
    (the signing secret was random per start up to v0.4.402); a schema 422 has a different body."""
    if response.status_code == 401:
        return True
    if response.status_code != 422:
        return False
    body = decode(response.text)
    return isinstance(body, dict) and set(body) == {"msg"}


def _records(value: Any, call: str) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise OakestraError(call, 200, f"expected a list of records, got {type(value).__name__}")
    return value
