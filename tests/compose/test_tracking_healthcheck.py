"""The tracking-server image's healthcheck (deploy/images/python/tracking-healthcheck.sh: sh and curl, no Python),
against a fake server on loopback: healthy only when the admin reads the default experiment and every FL user
exists; it logs in as admin with the password from its environment, which reaches curl on stdin (never its
command line), and never prints that password.

compose.yaml's fl-aggregator waits for this healthcheck (service_healthy), so these cases decide whether an
aggregator can start before its login works. The real server: tests/compose/test_compose.py and
test_compose_security.py; what it costs at idle: bench/tracking_healthcheck.py.
"""

from __future__ import annotations

import base64
import http.server
import os
import shutil
import subprocess
import threading
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import ROOT, missing_service

SCRIPT = ROOT / "deploy" / "images" / "python" / "tracking-healthcheck.sh"
ADMIN_PASSWORD = 'admin-password-for-the-fake-with-"quotes"-and-\\'
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


def healthcheck(variables: dict[str, str], tmp_path) -> subprocess.CompletedProcess:
    """The script as the image runs it, with a curl on PATH that records its arguments, then runs the real one."""
    curl = shutil.which("curl")
    if curl is None:
        missing_service("curl is not installed (apt-get install curl)")
    (tmp_path / "bin").mkdir(exist_ok=True)
    wrapper = tmp_path / "bin" / "curl"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {tmp_path}/curl-argv\nexec {curl} "$@"\n')
    wrapper.chmod(0o755)
    return subprocess.run(["sh", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", **variables})


def test_healthy_when_the_database_answers_and_every_fl_user_exists(fake, tmp_path):
    done = healthcheck(env(fake), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    paths = [path for path, _ in FakeTracking.seen]
    assert paths == ["/api/2.0/mlflow/experiments/get?experiment_id=0", "/api/2.0/mlflow/users/get?username=fl-demo"]
    assert "fl-demo" in done.stdout
    # The password went to curl on stdin: not in any of its command lines.
    argv = (tmp_path / "curl-argv").read_text()
    assert argv.count("--config -") == 2 and ADMIN_PASSWORD not in argv and "admin-password" not in argv


def test_healthy_without_fl_users(fake, tmp_path):
    assert healthcheck(env(fake, FLOPS_FL_USERS=""), tmp_path).returncode == 0
    assert len(FakeTracking.seen) == 1


@pytest.mark.parametrize("extra, expected", [
    ({"FLOPS_FL_USERS": f"demo:{FL_PASSWORD},other:{FL_PASSWORD}"}, "FL project user fl-other: HTTP 404"),
    ({"FLOPS_ADMIN_PASSWORD": "a-wrong-admin-password"}, "HTTP 401: the admin password was refused"),
    ({"FLOPS_ADMIN_PASSWORD": ""}, "FLOPS_ADMIN_PASSWORD: required"),
    ({"FLOPS_FL_USERS": "bad-name:short"}, "FLOPS_FL_USERS: item for 'bad-name'"),
])
def test_unhealthy_with_the_reason_and_without_secrets(fake, tmp_path, extra, expected):
    done = healthcheck(env(fake, **extra), tmp_path)
    assert done.returncode == 1
    assert expected in done.stdout
    for secret in (ADMIN_PASSWORD, FL_PASSWORD, "a-wrong-admin-password", "short"):
        assert secret not in done.stdout + done.stderr


def test_unhealthy_when_nothing_answers(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = healthcheck(env(port), tmp_path)
    assert done.returncode == 1 and "no answer" in done.stdout
