"""One MLflow tracking server per tenant: its environment, command line, schema upgrade and health check.

Store URIs (which carry passwords) reach the server only through MLFLOW_BACKEND_STORE_URI and
MLFLOW_ARTIFACTS_DESTINATION, never through its arguments. Artifacts are proxied (--serve-artifacts)
to the tenant's FTP folder; there is no --default-artifact-root, so clients never talk to FTP directly.
Every server asks for a login: it runs MLflow's basic-auth app with our guards (app.py, app name
flops-basic-auth), with the tenant's admin password and secret key from the secrets file, and its users in a
SQLite auth database (MLflow's auth migrations fail on MySQL and MariaDB: two foreign keys share one name).
A server is one process (runner.py, no `mlflow server` parent), started after the schema upgrade.

Under `flops-mlops up` a server never runs as root: started as root, it runs as tracking.os_user. Its private
files (SQLite metadata and auth databases) live in ``<state_dir>/tenants/<tenant>/``, mode 0700.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import requests

from ..configuration.schema import ConfigError
from ..configuration.secrets import Secrets, redact
from ..configuration.stack import StackConfig
from ..configuration.tracking import Tenant
from ..processes import ManagedProcess, as_account, can_traverse, open_log, private_dir, wait_until
from ..stores import ftp_client, mysql

APP_NAME = "flops-basic-auth"  # entry point of app.create_app (pyproject.toml, group mlflow.app)


def backend_store_uri(config: StackConfig, tenant: Tenant, secrets: Secrets) -> str:
    if config.backend_store.kind == "sqlite":
        return f"sqlite:///{sqlite_path(config, tenant)}"
    return mysql.tenant_uri(config, tenant, secrets.db_password(tenant.id))


def tenant_dir(config: StackConfig, tenant: Tenant) -> Path:
    """The tracking server's private folder: SQLite metadata (embedded) and auth databases."""
    return config.state_dir / "tenants" / tenant.id


def sqlite_path(config: StackConfig, tenant: Tenant) -> Path:
    return tenant_dir(config, tenant) / "metadata.db"


def auth_db_path(config: StackConfig, tenant: Tenant) -> Path:
    return tenant_dir(config, tenant) / "auth.db"


def legacy_sqlite_path(config: StackConfig, tenant: Tenant) -> Path:
    """Where releases before the login kept a tenant's SQLite metadata (moved on the next `up`)."""
    return config.state_dir / "sqlite" / f"{tenant.id}.db"


def artifacts_destination(config: StackConfig, tenant: Tenant, secrets: Secrets) -> str:
    store = config.artifact_store
    password = quote(secrets.ftp_password(tenant.id), safe="")
    scheme = "ftps" if store.tls else "ftp"
    return f"{scheme}://{tenant.ftp_user}:{password}@{store.host}:{store.port}{tenant.artifact_path}"


def mask(uri: str) -> str:
    """The URI with its password replaced by ***."""
    scheme, sep, rest = uri.partition("://")
    credentials, at, location = rest.rpartition("@")
    if not at or ":" not in credentials:
        return uri
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{location}"


def server_env(config: StackConfig, tenant: Tenant, secrets: Secrets, auth_db: Path) -> dict[str, str]:
    """The server's whole environment: store URIs, login settings (``auth_db``: its SQLite auth database)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "FLOPS_"))}
    env.update({
        "MLFLOW_BACKEND_STORE_URI": backend_store_uri(config, tenant, secrets),
        "MLFLOW_ARTIFACTS_DESTINATION": artifacts_destination(config, tenant, secrets),
        "MLFLOW_AUTH_ADMIN_PASSWORD": secrets.admin_password(tenant.id),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.secret_key(tenant.id),
        "FLOPS_AUTH_DB": str(auth_db),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true" if config.tracking.job_execution else "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        **ftp_client.environment(config),  # our FTP artifact repository's timeouts (and FTPS certificate)
    })
    return env


RUNNER = "flops_mlops.tracking.runner"  # one process per server (runner.py)


def allowed_hosts(config: StackConfig, tenant: Tenant) -> list[str]:
    """Host header values the server accepts: loopback and the public host, with and without its port."""
    t = config.tracking
    port = config.tracking_port(tenant)
    allowed = ["localhost", f"localhost:{port}", "127.0.0.1", f"127.0.0.1:{port}", t.public_host,
               f"{t.public_host}:{port}", *t.allowed_hosts]
    return list(dict.fromkeys(allowed))


def server_argv(config: StackConfig, tenant: Tenant) -> list[str]:
    """The server's command line (no secret in it): our single-process runner.

    With tracking.job_execution on it is `mlflow server` instead (mlflow_server_argv): only MLflow's CLI starts
    and supervises the job runner's processes.
    """
    if config.tracking.job_execution:
        return mlflow_server_argv(config, tenant)
    t = config.tracking
    return [sys.executable, "-m", RUNNER, "--host", t.host, "--port", str(config.tracking_port(tenant)),
            "--workers", str(t.workers), "--allowed-hosts", ",".join(allowed_hosts(config, tenant))]


def mlflow_server_argv(config: StackConfig, tenant: Tenant) -> list[str]:
    """MLflow's own `mlflow server` with our login app: a CLI process that supervises its uvicorn child."""
    t = config.tracking
    return [sys.executable, "-m", "mlflow", "server", "--host", t.host, "--port", str(config.tracking_port(tenant)),
            "--serve-artifacts", "--app-name", APP_NAME, "--workers", str(t.workers),
            "--allowed-hosts", ",".join(allowed_hosts(config, tenant))]


def upgrade_schema(process: ManagedProcess, env: dict[str, str], account: pwd.struct_passwd | None = None) -> None:
    """Bring the tenant's backend schema to this MLflow version (creates it on an empty database)."""
    with open_log(process.log_file) as log:
        log.write(b"\n--- mlflow db upgrade\n")
        log.flush()
        try:
            result = subprocess.run([sys.executable, "-m", "flops_mlops.tracking.server", "upgrade-schema"],
                                    env=env, stdout=log, stderr=subprocess.STDOUT, timeout=600,
                                    cwd=env.get("HOME"), **as_account(account))
        except subprocess.TimeoutExpired:
            raise process.failure(f"{process.name}: schema upgrade (mlflow db upgrade) did not finish in 600 s; "
                                  "is the backend store reachable?") from None
    if result.returncode != 0:
        raise process.failure(f"{process.name}: schema upgrade (mlflow db upgrade) failed")


def service_account(config: StackConfig) -> pwd.struct_passwd | None:
    """The account tracking servers run as: tracking.os_user when started as root, else None (this user).

    Checked before anything starts: the account exists, and can reach this Python and our package.
    """
    if os.geteuid() != 0:
        return None
    where = f"{config.source}: tracking.os_user"
    name = config.tracking.os_user
    if name is None:
        raise ConfigError(f"{where}: flops-mlops runs as root, and tracking servers never do: set tracking.os_user "
                          "to an unprivileged account (for example flops-mlops)")
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"{where}: no local account {name!r}; create it with: useradd --system --no-create-home "
                          f"--shell /usr/sbin/nologin {name}") from None
    needed = [Path(os.path.realpath(sys.executable)), Path(__file__).resolve().parent, config.state_dir]
    for path in needed:
        if not can_traverse(path, account):
            raise ConfigError(f"{where}: account {name!r} cannot reach {path} (a folder above it is closed to "
                              "others); install flops-mlops with a Python and in a folder that account can read "
                              "(make venv uses /usr/bin/python3 where it exists)")
    return account


def is_healthy(uri: str) -> bool:
    try:
        return requests.get(f"{uri}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


class TrackingServer:
    def __init__(self, config: StackConfig, tenant: Tenant):
        self.config = config
        self.tenant = tenant
        self.process = ManagedProcess(f"tracking-{tenant.id}", config.state_dir)
        self.started_at: float | None = None  # time.monotonic() of the last start
        self.local_uri = f"http://{'127.0.0.1' if config.tracking.host in ('0.0.0.0', '::') else config.tracking.host}:{config.tracking_port(tenant)}"

    def start(self, secrets: Secrets, account: pwd.struct_passwd | None = None) -> None:
        """Start as ``account`` (see service_account); its folders are made its own, closed to others."""
        data = tenant_dir(self.config, self.tenant)
        workdir = self.config.state_dir / "tracking" / self.tenant.id
        for parent in (data.parent, workdir.parent):
            private_dir(parent, 0o711 if account else 0o700)  # the account passes through to its own folder
        for folder in (data, workdir):
            private_dir(folder)
            if account:
                os.chown(folder, account.pw_uid, account.pw_gid)
        self._move_legacy_sqlite(account)
        env = {**server_env(self.config, self.tenant, secrets, auth_db_path(self.config, self.tenant)),
               "HOME": str(workdir)}
        upgrade_schema(self.process, env, account)
        self.process.start(server_argv(self.config, self.tenant), env=env, cwd=workdir, account=account)
        self.started_at = time.monotonic()

    def _move_legacy_sqlite(self, account: pwd.struct_passwd | None) -> None:
        old, new = legacy_sqlite_path(self.config, self.tenant), sqlite_path(self.config, self.tenant)
        if self.config.backend_store.kind != "sqlite" or not old.exists() or new.exists():
            return
        os.replace(old, new)
        os.chmod(new, 0o600)
        if account:
            os.chown(new, account.pw_uid, account.pw_gid)

    def wait_healthy(self, progress: Callable[[str], None] | None = None) -> None:
        """Until /health answers; ``progress`` hears the seconds since this server was started."""
        wait_until(lambda: is_healthy(self.local_uri), self.process,
                   f"tracking server of tenant {self.tenant.id} did not become healthy",
                   self.config.tracking.startup_timeout, progress=progress,
                   waiting_for=f"tracking server {self.tenant.id} ({self.local_uri}/health)",
                   since=self.started_at)

    def stop(self) -> bool:
        return self.process.stop()


def _upgrade_from_env() -> int:
    from mlflow.db import upgrade

    uri = os.environ.get("MLFLOW_BACKEND_STORE_URI")
    if not uri:
        print("MLFLOW_BACKEND_STORE_URI is not set", file=sys.stderr)
        return 2
    try:
        upgrade.main(args=[uri], standalone_mode=False)
    except Exception as exc:  # report without the password the URI holds
        message = redact(str(exc), [unquote(urlsplit(uri).password or "")])
        print(f"schema upgrade failed: {type(exc).__name__}: {message}", file=sys.stderr)
        return 1
    print("schema is up to date")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["upgrade-schema"]:
        print("usage: python -m flops_mlops.tracking.server upgrade-schema  (URI in MLFLOW_BACKEND_STORE_URI)",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(_upgrade_from_env())
