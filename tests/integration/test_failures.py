"""What a user meets when something is wrong: a clear message, the right exit code, nothing left running."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import psutil
import pytest
import yaml
from conftest import CLI, ROOT


def running_pids(stack) -> list[int]:
    report = json.loads(stack.cli("status", "--json", check=True).stdout)
    return [s["pid"] for s in report["services"] if s["running"]]


def test_bad_config_exits_2_naming_file_and_key(make_stack):
    stack = make_stack("local")
    data = yaml.safe_load(stack.config_path.read_text())
    data["tracking"]["workers"] = "two"
    stack.config_path.write_text(yaml.safe_dump(data))
    result = stack.cli("up", "--detach")
    assert result.returncode == 2
    assert f"{stack.config_path}: tracking.workers: expected an integer, got str 'two'" in result.stderr


def test_bad_tenant_id_exits_2_before_anything_starts(make_stack):
    stack = make_stack("local")
    data = yaml.safe_load(stack.config_path.read_text())
    data["tenants"].append({"id": "x'; DROP DATABASE mysql; --"})
    stack.config_path.write_text(yaml.safe_dump(data))
    result = stack.cli("up", "--detach")
    assert result.returncode == 2
    assert "tenants[1].id" in result.stderr and "is not a valid tenant id" in result.stderr
    assert not os.listdir(stack.data["state_dir"])


def test_missing_secrets_file_exits_2_and_says_how_to_create_it(make_stack):
    stack = make_stack("local")
    os.remove(stack.data["secrets_file"])
    result = stack.cli("up", "--detach")
    assert result.returncode == 2
    assert "secrets file not found" in result.stderr and "secrets init" in result.stderr
    assert running_pids(stack) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="the service account is used only when started as root")
@pytest.mark.parametrize("account, message", [
    (None, "tracking.os_user: flops-mlops runs as root, and tracking servers never do"),
    ("nosuchaccount", "tracking.os_user: no local account 'nosuchaccount'; create it with: useradd"),
    ("root", "tracking.os_user: 'root' is not an unprivileged account name"),
])
def test_root_without_a_usable_service_account_exits_2_and_starts_nothing(make_stack, account, message):
    stack = make_stack("local")
    data = yaml.safe_load(stack.config_path.read_text())
    data["tracking"]["os_user"] = account
    stack.config_path.write_text(yaml.safe_dump(data))
    result = stack.cli("up", "--detach")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not os.listdir(stack.data["state_dir"])  # nothing started, nothing written


def test_busy_port_exits_2_and_starts_nothing(make_stack):
    stack = make_stack("local", tenants=["acme", "globex"])
    port = stack.data["tenants"][1]["port"]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        result = stack.cli("up", "--detach")
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 (tracking server of tenant globex) is already in use" in result.stderr
    assert running_pids(stack) == []
    assert not (stack.load().state_dir / "pids").exists()


@pytest.mark.services
def test_store_that_does_not_come_up_shows_its_log_and_leaves_nothing(make_stack):
    stack = make_stack("native")
    broken = stack.load().state_dir / "mysql" / "data" / "mysql"
    broken.mkdir(parents=True)  # looks initialized, but holds no system tables
    result = stack.cli("up", "--detach")
    assert result.returncode == 1
    assert "backend store (MySQL) did not come up" in result.stderr
    assert "last lines:" in result.stderr and "backend-store.log" in result.stderr
    assert running_pids(stack) == []


def start_foreground(stack) -> subprocess.Popen:
    proc = subprocess.Popen([*CLI, "--config", str(stack.config_path), "up"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        report = json.loads(stack.cli("status", "--json", check=True).stdout)
        if all(t["healthy"] for t in report["tenants"]):
            return proc
        assert proc.poll() is None, proc.communicate()
        time.sleep(1)
    raise AssertionError("foreground stack did not become healthy")


def test_ctrl_c_in_the_foreground_stops_everything(make_stack):
    stack = make_stack("local")
    proc = start_foreground(stack)
    pids = running_pids(stack)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    assert running_pids(stack) == []
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_tracking_server_that_exits_stops_the_foreground_stack_with_an_error(make_stack):
    stack = make_stack("local")
    proc = start_foreground(stack)
    report = json.loads(stack.cli("status", "--json", check=True).stdout)
    tracker = next(s for s in report["services"] if s["name"] == "tracking-acme")
    os.killpg(tracker["pid"], signal.SIGKILL)
    assert proc.wait(timeout=60) == 1
    _, stderr = proc.communicate()
    assert "tracking-acme exited" in stderr and "tracking-acme.log" in stderr
    assert running_pids(stack) == []


def test_foreground_up_on_a_running_stack_leaves_it_alone(make_stack):
    stack = make_stack("local")
    stack.up()
    pids = running_pids(stack)
    again = stack.cli("up", timeout=120)  # foreground: returns at once instead of supervising
    assert again.returncode == 0
    assert "already running" in again.stderr
    assert running_pids(stack) == pids


def test_sigterm_during_up_stops_what_was_started(make_stack):
    stack = make_stack("local")
    proc = subprocess.Popen([*CLI, "--config", str(stack.config_path), "up", "--detach"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    started: list[int] = []
    while not started and time.monotonic() < deadline:
        started = running_pids(stack)
        time.sleep(0.2)
    # The signal must land in the middle of `up`: a service of the stack runs, and `up` has not finished.
    assert started, "no service had started within 120 s"
    assert proc.poll() is None, f"up finished before the signal (exit {proc.returncode})"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr  # Ctrl-C's code: cleaned up as after an interrupt
    assert [pid for pid in started if psutil.pid_exists(pid)] == []  # what had started was stopped
    assert running_pids(stack) == []
