"""Helpers for the pyinfra tests: a stack configuration with free ports, real `flops-mlops provision` runs,
and the end-to-end check of a provisioned tenant.
"""

from __future__ import annotations

import contextlib
import ftplib
import json
import shutil
import tempfile
import uuid
from pathlib import Path

import yaml
from conftest import free_port, free_port_range, run_cli

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
    from flops_mlops.configuration import loading as config_module
    from flops_mlops.configuration.secrets import Secrets
    from tracking_checks import assert_the_tested_mariadb, backend_store_facts, log_example, mysql_counts

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
    assert_the_tested_mariadb(backend_store_facts(backend_host, config.backend_store.port,
                                                  (tenant.db_user, secrets.db_password(tenant.id)), tenant.database))
