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

import pytest
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
    """A native stack configuration with free ports, FTPS on; the deploys read tenants and ports from it."""
    low, high = free_port_range(5)
    data = {
        "name": f"pyi-{uuid.uuid4().hex[:10]}",
        "state_dir": str(folder / "state"),
        "secrets_file": str(folder / "secrets.env"),
        "backend_store": {"kind": "mysql", "managed": False, "host": "127.0.0.1", "port": free_port()},
        "artifact_store": {"kind": "vsftpd", "managed": False, "host": "127.0.0.1", "port": free_port(),
                           "passive_ports": [low, high], "pasv_address": "127.0.0.1", "tls": True},
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


def ftp_files(host: str, port: int, user: str, password: str, folder: str, ca: Path | None = None) -> list[str]:
    """File names under ``folder`` (one level), as the FTP user sees them (vsftpd has no MLSD: NLST); with
    ``ca`` over FTPS verified against it (for the address dialled)."""
    from tracking_checks import ftp_client

    with ftp_client(host, port, ca) as ftp:
        ftp.login(user, password)
        return sorted(Path(name).name for name in ftp.nlst(folder))


def check_ftps_only(host: str, port: int, user: str, password: str) -> None:
    """artifact_store.tls: a plain FTP login as the tenant, with its right password, is refused (530)."""
    with ftplib.FTP() as ftp:
        ftp.connect(host, port, timeout=10)
        try:
            ftp.login(user, password)
        except ftplib.error_perm as refused:
            assert str(refused).startswith("530"), refused
        else:
            raise AssertionError(f"plain FTP login as {user} on {host}:{port} was accepted (artifact_store.tls)")


def check_tenant_end_to_end(config_path: Path, tracking_host: str, backend_host: str, ftp_host: str,
                            tenant_id: str | None = None, mysql_tls: bool | None = None) -> None:
    """Log a model through the tenant's tracking server (default: the first tenant's; over HTTPS verified against
    the deployment's CA with tracking.tls); find its files on FTP
    and its rows in MySQL, where its database user sees its own database only, over verified TLS when
    ``mysql_tls`` (None: backend_store.tls of the configuration)."""
    import pymysql
    from flops_mlops.configuration import loading as config_module
    from flops_mlops.configuration.secrets import Secrets
    from tracking_checks import assert_the_tested_mariadb, backend_store_facts, log_example, mysql_counts

    from flops_mlops.configuration import certificates

    config = config_module.load(config_path)
    secrets = Secrets.load(config)
    tenant = config.tenant(tenant_id) if tenant_id else config.tenants[0]
    # With tracking.tls over HTTPS, MLflow's client verifying the server against the deployment's CA.
    tracking_ca = certificates.tracking_ca(config)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_INSECURE_TLS", raising=False)
        if tracking_ca is not None:
            patch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(tracking_ca))
        logged = log_example(f"{config.tracking_scheme}://{tracking_host}:{config.tracking_port(tenant)}",
                             login=("admin", secrets.admin_password(tenant.id)))

    # On the FTP store, as the tenant; with artifact_store.tls over FTPS only, the store's certificate verified
    # against the deployment's CA for the address dialled (the tracking server verified it too: it put them there).

    folder = f"{tenant.artifact_path}/{logged.experiment_id}/models/{logged.model_id}/artifacts"
    ca = certificates.ca_certificate_path(config) if config.artifact_store.tls else None
    names = ftp_files(ftp_host, config.artifact_store.port, tenant.ftp_user, secrets.ftp_password(tenant.id),
                      folder, ca)
    assert {"MLmodel", "requirements.txt"} <= set(names), names
    if ca is not None:
        check_ftps_only(ftp_host, config.artifact_store.port, tenant.ftp_user, secrets.ftp_password(tenant.id))

    counts = mysql_counts(backend_host, config.backend_store.port, tenant.db_user,
                          secrets.db_password(tenant.id), tenant.database, logged)
    assert counts == {"runs": 1, "params": 2, "metrics": 2, "logged_models": 1}, counts

    # backend_store.tls (the default): the server's certificate verifies against the deployment's CA for the
    # address the tracking host dials, the session is encrypted, and the tenant's user is refused without TLS.
    from flops_mlops.stores.mysql import verified_ssl
    from flops_mlops.stores.tenant_db import AUTH_SUFFIX

    if mysql_tls is None:
        mysql_tls = certificates.mysql_tls(config)
    tls = verified_ssl(certificates.ca_certificate_path(config)) if mysql_tls else None
    with pymysql.connect(host=backend_host, port=config.backend_store.port, user=tenant.db_user,
                         password=secrets.db_password(tenant.id), ssl=tls) as conn, conn.cursor() as cur:
        cur.execute("SHOW DATABASES")
        visible = {row[0] for row in cur.fetchall()} - {"information_schema"}
        # Grants on its own databases only: its records and its logins (MLflow's users and grants).
        assert visible == {tenant.database, f"{tenant.database}{AUTH_SUFFIX}"}, visible
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
        assert bool(cur.fetchone()[1]) == (tls is not None)
    if tls is not None:
        try:
            pymysql.connect(host=backend_host, port=config.backend_store.port, user=tenant.db_user,
                            password=secrets.db_password(tenant.id), ssl_disabled=True, connect_timeout=10)
        except pymysql.err.OperationalError as refused:
            assert refused.args[0] == 1045, refused
        else:
            raise AssertionError(f"{tenant.db_user} logged in to {backend_host} without TLS")
    assert_the_tested_mariadb(backend_store_facts(backend_host, config.backend_store.port,
                                                  (tenant.db_user, secrets.db_password(tenant.id)), tenant.database))
