"""The tracking-server container's healthcheck (`python -m flops_mlops.tracking.container healthcheck`), against a fake
server on loopback: healthy only when the admin reads the default experiment and every FL user exists; it
logs in as admin with the password from its environment and never prints that password.

compose.yaml's fl-aggregator waits for this healthcheck (service_healthy), so these cases decide whether an
aggregator can start before its login works. The real server: test_compose_security.py.
"""

from __future__ import annotations

import base64
import http.server
import threading
from urllib.parse import parse_qs, urlsplit

import pytest
from flops_mlops.tracking import container

ADMIN_PASSWORD = "admin-password-for-the-fake"
FL_PASSWORD = "fl-password-for-the-fake"


class FakeTracking(http.server.BaseHTTPRequestHandler):
    users: set[str] = set()
    seen: list[tuple[str, str | None]] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        auth = self.headers.get("Authorization")
        self.seen.append((self.path, auth))
        expected = "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
        url = urlsplit(self.path)
        if auth != expected:
            status = 401
        elif url.path == "/api/2.0/mlflow/experiments/get":
            status = 200 if parse_qs(url.query) == {"experiment_id": ["0"]} else 400
        elif url.path == "/api/2.0/mlflow/users/get":
            status = 200 if parse_qs(url.query).get("username", [""])[0] in self.users else 404
        else:
            status = 404
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def fake():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeTracking)
    FakeTracking.users, FakeTracking.seen = {"fl-demo"}, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def env(port: int, **extra: str) -> dict[str, str]:
    return {"FLOPS_PORT": str(port), "FLOPS_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "FLOPS_FL_USERS": f"demo:{FL_PASSWORD}", **extra}


def test_healthy_when_the_database_answers_and_every_fl_user_exists(fake, capsys):
    assert container.healthcheck(env(fake)) == 0
    paths = [path for path, _ in FakeTracking.seen]
    assert paths == ["/api/2.0/mlflow/experiments/get?experiment_id=0", "/api/2.0/mlflow/users/get?username=fl-demo"]
    assert "fl-demo" in capsys.readouterr().out


def test_healthy_without_fl_users(fake):
    assert container.healthcheck(env(fake, FLOPS_FL_USERS="")) == 0
    assert len(FakeTracking.seen) == 1


@pytest.mark.parametrize("extra, expected", [
    ({"FLOPS_FL_USERS": f"demo:{FL_PASSWORD},other:{FL_PASSWORD}"}, "FL project user fl-other: HTTP 404"),
    ({"FLOPS_ADMIN_PASSWORD": "a-wrong-admin-password"}, "HTTP 401: the admin password was refused"),
    ({"FLOPS_ADMIN_PASSWORD": ""}, "FLOPS_ADMIN_PASSWORD: required"),
    ({"FLOPS_FL_USERS": "bad-name:short"}, "FLOPS_FL_USERS: item for 'bad-name'"),
])
def test_unhealthy_with_the_reason_and_without_secrets(fake, capsys, extra, expected):
    assert container.healthcheck(env(fake, **extra)) == 1
    out = capsys.readouterr().out
    assert expected in out
    for secret in (ADMIN_PASSWORD, FL_PASSWORD, "a-wrong-admin-password", "short"):
        assert secret not in out


def test_unhealthy_when_nothing_answers(capsys):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert container.healthcheck(env(port), timeout=2) == 1
    assert "no answer" in capsys.readouterr().out


def test_main_dispatches_healthcheck(fake, monkeypatch):
    for key, value in env(fake).items():
        monkeypatch.setenv(key, value)
    assert container.main(["healthcheck"]) == 0
