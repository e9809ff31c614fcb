"""Helpers for the pyinfra tests: a stack configuration with free ports, real `flops-mlops provision` runs,
the end-to-end check of a provisioned tenant, and cleanup by recorded pid files.
"""

from __future__ import annotations

import contextlib
import ftplib
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import psutil
import yaml
import conftest
from conftest import free_port, free_port_range, need_binary, run_cli

ROOT = Path(__file__).resolve().parent.parent
PYINFRA_DIR = ROOT / "deploy" / "pyinfra"


@contextlib.contextmanager
def sandbox_root():
    """A private root folder the deploys write under. Not in pytest's tmp_path: that is mode 0700, and
    MariaDB runs as the mysql account, which must reach its data folder."""
    root = Path(tempfile.mkdtemp(prefix="flops-pyinfra-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def need_native_services() -> None:
    """What the native stack needs, plus the tools the deploys call on the host."""
    conftest.need_native_services()
    for names in (("mariadb-install-db",), ("mysql",), ("start-stop-daemon",), ("openssl",), ("ss",)):
        need_binary(*names)


def write_stack(folder: Path, tenants: list[str]) -> Path:
    """A native stack configuration with free ports; the deploys read tenants and ports from it."""
    low, high = free_port_range(5)
    data = {
        "name": f"pyi-{uuid.uuid4().hex[:10]}",
        "state_dir": str(folder / "state"),
        "secrets_file": str(folder / "secrets.env"),
        "backend_store": {"kind": "mysql", "managed": False, "host": "127.0.0.1", "port": free_port()},
        "artifact_store": {"kind": "vsftpd", "managed": False, "host": "127.0.0.1", "port": free_port(),
                           "passive_ports": [low, high], "pasv_address": "127.0.0.1"},
        "tracking": {"host": "127.0.0.1", "public_host": "127.0.0.1", "workers": 1, "startup_timeout": 240},
        "tenants": [{"id": tenant, "port": free_port()} for tenant in tenants],
    }
    path = folder / "stack.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    run_cli("secrets", "init", config=path, check=True)
    return path


def provision(config: Path, inventory: Path, *flags: str, env: dict[str, str] | None = None,
              check: bool = True) -> dict:
    """Run `flops-mlops provision ... --json`; return pyinfra's JSON (plan, results)."""
    result = run_cli("provision", "--inventory", str(inventory), "--json", *flags, config=config, env=env,
                     timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"provision {' '.join(flags)} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-6000:]}")
    report = json.loads(result.stdout) if result.stdout.strip() else {}
    report["output"] = result.stdout + result.stderr  # for checks that no secret is printed
    return report


def changed_operations(report: dict) -> list[str]:
    return [f"{op['name']} on {', '.join(op['success'])}" for op in report["results"]["operations"] if op["success"]]


def ftp_files(host: str, port: int, user: str, password: str, folder: str) -> list[str]:
    """File names under ``folder`` (one level), as the FTP user sees them (vsftpd has no MLSD: NLST)."""
    with ftplib.FTP() as ftp:
        ftp.connect(host, port, timeout=10)
        ftp.login(user, password)
        return sorted(Path(name).name for name in ftp.nlst(folder))


def check_tenant_end_to_end(config_path: Path, tracking_host: str, backend_host: str, ftp_host: str,
                            tenant_id: str | None = None) -> None:
    """Log a model through the tenant's tracking server (default: the first tenant's); find its files on FTP
    and its rows in MySQL, where its database user sees its own database only."""
    import pymysql
    from tracking_checks import log_example, mysql_counts

    from flops_mlops import config as config_module
    from flops_mlops.secrets import Secrets

    config = config_module.load(config_path)
    secrets = Secrets.load(config)
    tenant = config.tenant(tenant_id) if tenant_id else config.tenants[0]
    logged = log_example(f"http://{tracking_host}:{config.tracking_port(tenant)}",
                         login=("admin", secrets.admin_password(tenant.id)))

    folder = f"{tenant.artifact_path}/{logged.experiment_id}/models/{logged.model_id}/artifacts"
    names = ftp_files(ftp_host, config.artifact_store.port, tenant.ftp_user, secrets.ftp_password(tenant.id),
                      folder)
    assert {"MLmodel", "requirements.txt"} <= set(names), names

    counts = mysql_counts(backend_host, config.backend_store.port, tenant.db_user,
                          secrets.db_password(tenant.id), tenant.database, logged)
    assert counts == {"runs": 1, "params": 2, "metrics": 2, "logged_models": 1}, counts

    with pymysql.connect(host=backend_host, port=config.backend_store.port, user=tenant.db_user,
                         password=secrets.db_password(tenant.id)) as conn, conn.cursor() as cur:
        cur.execute("SHOW DATABASES")
        visible = {row[0] for row in cur.fetchall()} - {"information_schema"}
        assert visible == {tenant.database}, visible  # grants on its own database only
        cur.execute("SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
                    "WHERE SCHEMA_NAME = %s", (tenant.database,))
        charset, collation = cur.fetchone()
        assert charset == "utf8mb4" and collation in ("utf8mb4_nopad_bin", "utf8mb4_0900_bin"), collation


SERVICE_ACCOUNT = "flops-mlops"  # the inventories' flops_service_user


def check_login_and_private_files(config_path: Path, tracking_host: str, root: Path) -> None:
    """The tenant's tracking server on the host whose flops_root is ``root``: asks for a login, runs as the
    service account (never root), keeps its files private, and lets no secret out in answers or its log."""
    import requests

    from flops_mlops import config as config_module
    from flops_mlops.secrets import Secrets

    config = config_module.load(config_path)
    secrets = Secrets.load(config)
    tenant = config.tenants[0]
    port = config.tracking_port(tenant)
    uri = f"http://{tracking_host}:{port}"

    assert requests.get(f"{uri}/health", timeout=10).status_code == 200
    anonymous = requests.get(f"{uri}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, timeout=10)
    assert anonymous.status_code == 401, (anonymous.status_code, anonymous.text[:300])

    account = pwd.getpwnam(SERVICE_ACCOUNT)
    assert account.pw_uid != 0
    listening = {c.pid for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid}
    assert listening, f"no process listens on port {port}"
    for pid in listening:
        uids = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:"))
        assert uids.split()[1:] == [str(account.pw_uid)] * 4, (pid, uids)  # real, effective, saved, filesystem

    etc, data, logs = (root / "etc" / "flops-mlops", root / "var" / "lib" / "flops-mlops",
                       root / "var" / "log" / "flops-mlops")
    env_file = one(etc.glob(f"*/tracking/{tenant.id}.env"))
    workdir = one(data.glob(f"*/tracking/{tenant.id}"))
    auth_db = workdir / "auth" / "auth.db"
    log_file = one(logs.glob(f"*/*-tracking-{tenant.id}.log"))
    for path in (env_file, auth_db, *logs.glob("*/*.log")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path, oct(path.stat().st_mode))
    for path in (workdir, auth_db.parent, workdir.parent):
        info = path.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o700, account.pw_uid), (path, oct(info.st_mode))
    assert auth_db.stat().st_uid == account.pw_uid and env_file.stat().st_uid == 0

    values = [value for value in secrets.values.values() if value]
    leaked = lambda text: [key for key, value in secrets.values.items()  # noqa: E731
                           if value and (value in text or quote(value, safe="") in text)]
    answer = requests.get(f"{uri}/api/2.0/mlflow-artifacts/artifacts/nothing-here",
                          auth=("admin", secrets.admin_password(tenant.id)), timeout=60)
    assert answer.status_code != 401, answer.text[:300]
    assert values and leaked(answer.text) == [], (answer.status_code, leaked(answer.text))
    assert leaked(log_file.read_text(errors="replace")) == [], log_file


def one(paths) -> Path:
    found = list(paths)
    assert len(found) == 1, found
    return found[0]


def pid_files(root: Path) -> list[Path]:
    return sorted(root.glob("**/run/flops-mlops/*/*.pid"))


def stop_leftovers(root: Path, stack_name: str) -> list[int]:
    """Last-resort cleanup after `provision --stop`: stop what the pid files under ``root`` record
    (the daemon's own process group), and remove the deployment's PAM service. Returns the pids stopped."""
    stopped = []
    for pid_file in pid_files(root):
        try:
            proc = psutil.Process(int(pid_file.read_text().strip()))
            group = os.getpgid(proc.pid)
            if group in (0, 1, os.getpgrp()):
                continue
            os.killpg(group, signal.SIGTERM)
            stopped.append(proc.pid)
            proc.wait(timeout=30)
        except (ValueError, psutil.Error, ProcessLookupError, subprocess.TimeoutExpired):
            pass
        pid_file.unlink(missing_ok=True)
    for pam in Path("/etc/pam.d").glob(f"flops-mlops-{stack_name}-*"):
        pam.unlink()
    return stopped


def recorded_processes(root: Path) -> list[psutil.Process]:
    alive = []
    for pid_file in pid_files(root):
        try:
            proc = psutil.Process(int(pid_file.read_text().strip()))
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except (ValueError, psutil.Error):
            pass
    return alive


def wait_gone(processes: list[psutil.Process], timeout: float = 30) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        processes = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not processes:
            break
        time.sleep(0.3)
    return processes
