"""Shared test fixtures: free ports, required services, and throw-away stacks driven through the real CLI.

Set FLOPS_REQUIRE_SERVICES=1 (CI does) to turn "service not installed here" skips into failures.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
REQUIRE_SERVICES = os.environ.get("FLOPS_REQUIRE_SERVICES") == "1"
# Fail fast instead of retrying for minutes when a server answers 500 or is down.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
CLI = [sys.executable, "-m", "flops_mlops.cli"]


def missing_service(reason: str) -> None:
    """Fail when services are required (CI), otherwise skip."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service missing: {reason}")
    pytest.skip(reason)


def need_binary(*names: str) -> str:
    from flops_mlops.processes import SERVICE_PATH

    for name in names:
        found = shutil.which(name, path=SERVICE_PATH)
        if found:
            return found
    missing_service(f"none of {', '.join(names)} is installed")
    raise AssertionError("unreachable")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _test_ports() -> range:
    """The ports this pytest process picks from: below the kernel's ephemeral range (where outgoing connections
    take their source ports, so a port picked there can be taken before the service binds it), one slice per
    xdist worker (PYTEST_XDIST_WORKER gw0, gw1, ...), so that two workers never pick the same port."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    low, high = 10000, max(ephemeral_low, 12000)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker) if worker.isdigit() else 0
    size = (high - low) // max(workers, 1)
    return range(low + index * size, low + (index + 1) * size)


TEST_PORTS = _test_ports()
# Ports already handed out by this process: a port is free until its service binds it, so two picks for one
# stack (a tenant's port and the FTP passive range, say) could otherwise land on the same number.
_HANDED_OUT: set[int] = set()


def _available(port: int) -> bool:
    if len(_HANDED_OUT) > len(TEST_PORTS) // 2:  # a long session: the early stacks are long gone
        _HANDED_OUT.clear()
    return port not in _HANDED_OUT and _bindable(port)


def free_port() -> int:
    for _ in range(500):
        port = random.choice(TEST_PORTS)
        if _available(port):
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError(f"no free port in {TEST_PORTS.start}-{TEST_PORTS.stop - 1}")


def free_port_range(size: int) -> tuple[int, int]:
    """A run of ``size`` consecutive free ports (for FTP passive ranges), none handed out before."""
    for _ in range(200):
        start = random.randrange(TEST_PORTS.start, TEST_PORTS.stop - size)
        ports = range(start, start + size)
        if all(_available(p) for p in ports):
            _HANDED_OUT.update(ports)
            return start, start + size - 1
    raise RuntimeError("no free port range found")


def run_cli(*args: str, config: Path | None = None, timeout: float = 600, check: bool = False,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    argv = [*CLI, *(["--config", str(config)] if config else []), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}\nstdout:\n{result.stdout}\n"
                             f"stderr:\n{result.stderr}")
    return result


def compare_with_golden(golden: Path, files: dict[str, bytes]) -> None:
    """Assert that ``files`` (name -> content) are exactly the golden files in folder ``golden``.

    With FLOPS_UPDATE_GOLDEN=1 the golden files are rewritten first and the test then fails, whatever they
    held: update mode can never turn a run green (.ci/run refuses it). Review the diff, run again without it.
    """
    if os.environ.get("FLOPS_UPDATE_GOLDEN") == "1":
        golden.mkdir(parents=True, exist_ok=True)
        for stale in set(p.name for p in golden.iterdir()) - set(files):
            (golden / stale).unlink()
        for name, content in files.items():
            (golden / name).write_bytes(content)
        pytest.fail(f"FLOPS_UPDATE_GOLDEN=1: rewrote {len(files)} golden file(s) in {golden}; review the diff "
                    "(git diff) and run again without FLOPS_UPDATE_GOLDEN")
    assert sorted(p.name for p in golden.iterdir()) == sorted(files)
    for name, content in files.items():
        assert content == (golden / name).read_bytes(), f"{name} differs from the golden file"


@dataclass
class TestStack:
    """A stack with its own ports, state dir and secrets, for one test."""

    config_path: Path
    data: dict

    @classmethod
    def create(cls, kind: str, folder: Path, tenants: list[str], **overrides) -> "TestStack":
        """A stack configuration in ``folder`` (stack_data, with ``overrides`` merged into its sections) and its
        secrets file; nothing started yet."""
        data = stack_data(kind, folder, tenants)
        for key, value in overrides.items():
            data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
        path = folder / "stack.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        stack = cls(path, data)
        stack.cli("secrets", "init", check=True)
        return stack

    def cli(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return run_cli(*args, config=self.config_path, **kwargs)

    def up(self) -> subprocess.CompletedProcess:
        return self.cli("up", "--detach", check=True)

    def down(self, *extra: str) -> None:
        self.cli("down", *extra, check=True)

    def load(self):
        from flops_mlops.configuration import loading

        return loading.load(self.config_path)

    def secrets(self):
        from flops_mlops.configuration.secrets import Secrets

        return Secrets.load(self.load())

    def admin(self, tenant: str = "acme") -> tuple[str, str]:
        """The tenant's admin login (user, password) for its tracking server."""
        return "admin", self.secrets().admin_password(tenant)


def client_from(address: str):
    """A requests session whose connections come from ``address`` (any of 127.0.0.0/8: all loopback on Linux), so
    that a test can tell client addresses apart, as the login throttle does (tracking/logins.py)."""
    import requests
    from requests.adapters import HTTPAdapter

    class FromAddress(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            kwargs["source_address"] = (address, 0)
            super().init_poolmanager(*args, **kwargs)

    session = requests.Session()
    session.mount("http://", FromAddress())
    return session


def need_native_services() -> None:
    """MariaDB or MySQL, vsftpd with pam_pwdfile, and root (vsftpd chroots each tenant)."""
    from flops_mlops.stores.vsftpd import PAM_MODULE_DIRS

    if os.geteuid() != 0:
        missing_service("the native stack runs vsftpd, which must be started as root")
    need_binary("mariadbd", "mysqld")
    need_binary("vsftpd")
    if not any((d / "pam_pwdfile.so").exists() for d in PAM_MODULE_DIRS):
        missing_service("PAM module pam_pwdfile (libpam-pwdfile) is not installed")


TRACKING_ACCOUNT = "flops-mlops"  # `make account` creates it; tracking servers started as root run as it


def need_tracking_account() -> None:
    import pwd

    if os.geteuid() != 0:
        return
    try:
        pwd.getpwnam(TRACKING_ACCOUNT)
    except KeyError:
        missing_service(f"tracking servers started as root run as the account {TRACKING_ACCOUNT}, which does not "
                        "exist here (make account creates it)")


# The test files that take longest, longest first (from `make test`'s list of the slowest steps: keep it current).
# `make test` runs each file whole on one of two workers (--dist loadfile) in collection order
# (--no-loadscope-reorder): started first, a long file runs beside the many short ones instead of holding the run
# open at its end while the other worker idles.
SLOW_FILES = (
    "tests/integration/test_model_oci.py",
    "tests/integration/test_fl_image_oci.py",
    "tests/security/test_attacks.py",
    "tests/integration/test_pyinfra_systemd.py",
    "tests/integration/test_backup.py",
    "tests/integration/test_hierarchical.py",
    "tests/integration/test_stack_images_oci.py",
    "tests/integration/test_ml_repos.py",
    "tests/integration/test_fl_round.py",
    "tests/compose/test_compose_guide.py",
    "tests/compose/test_compose_backup.py",
    "tests/compose/test_compose_wire.py",
    "tests/integration/test_stack.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: position for position, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(SLOW_FILES)))  # stable: the rest as is


def stack_data(kind: str, tmp_path: Path, tenants: list[str]) -> dict:
    """A configuration like configs/<kind>.yaml, with free ports and paths under ``tmp_path``."""
    if kind == "native":
        need_native_services()
    need_tracking_account()
    low, high = free_port_range(4)
    # vsftpd serves folders as an unprivileged account and pytest's tmp dirs are closed to it: keep the
    # state in a folder of its own that others may enter (not list); `down --purge` removes it.
    state_dir = Path(tempfile.mkdtemp(prefix="flops-test-state-"))
    state_dir.chmod(0o711)
    data = {
        "name": f"test-{kind}",
        "state_dir": str(state_dir),
        "secrets_file": str(tmp_path / "secrets.env"),
        "artifact_store": {"kind": "embedded", "host": "127.0.0.1", "port": free_port(),
                           "passive_ports": [low, high], "pasv_address": "127.0.0.1"},
        "tracking": {"host": "127.0.0.1", "public_host": "127.0.0.1", "workers": 1,
                     "startup_timeout": 240, "os_user": TRACKING_ACCOUNT},
        "tenants": [{"id": tenant, "port": free_port()} for tenant in tenants],
    }
    if kind == "native":
        data["backend_store"] = {"kind": "mysql", "managed": True, "host": "127.0.0.1", "port": free_port()}
        data["artifact_store"]["kind"] = "vsftpd"
    return data


def copy_checkout(destination: Path) -> None:
    """What a fresh clone of this checkout holds (its tracked and untracked, not ignored files, as they are now),
    copied into ``destination``: no .venv, .env, .flops or build output."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # listed but deleted in the work tree: not in a clone of it either
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name, follow_symlinks=False)


@pytest.fixture(scope="session")
def clean_checkout():
    """A clean copy of this checkout with its own venv (`make venv`, as the README says), shared by the tests that
    run the user's first commands: the README's `make demo` and the compose guide. In a folder others may enter
    (not list): tracking servers started as root run as the account flops-mlops, from this copy's venv."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        missing_service("git and a git checkout, to copy what a clone holds")
    need_tracking_account()
    folder = Path(tempfile.mkdtemp(prefix="flops-clean-checkout-"))
    folder.chmod(0o711)
    try:
        copy_checkout(folder)
        venv = subprocess.run(["make", "venv"], cwd=folder, capture_output=True, text=True, timeout=1200,
                              env={k: v for k, v in os.environ.items() if not k.startswith(("FLOPS_", "VIRTUAL_ENV"))})
        assert venv.returncode == 0, f"make venv in a clean copy failed:\n{venv.stdout[-3000:]}\n{venv.stderr[-3000:]}"
        yield folder
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(folder)], timeout=600)  # a venv: faster than rmtree


@pytest.fixture
def make_stack(tmp_path):
    """make_stack(kind="local"|"native", tenants=[...]) -> TestStack; purged at teardown."""
    created: list[TestStack] = []

    def factory(kind: str = "local", tenants: list[str] | None = None, **overrides) -> TestStack:
        folder = tmp_path / f"stack{len(created)}"
        folder.mkdir()
        stack = TestStack.create(kind, folder, tenants or ["acme"], **overrides)
        created.append(stack)
        return stack

    yield factory
    for stack in created:
        stack.cli("down", "--purge")
        shutil.rmtree(stack.data["state_dir"], ignore_errors=True)
