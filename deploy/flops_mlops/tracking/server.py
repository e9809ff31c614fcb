"""One MLflow tracking server per tenant: its environment, command line, schema upgrade and health check.

Store URIs (which carry passwords) reach the server only through MLFLOW_BACKEND_STORE_URI and
MLFLOW_ARTIFACTS_DESTINATION, never through its arguments. Artifacts are proxied (--serve-artifacts)
to the tenant's FTP folder; there is no --default-artifact-root, so clients never talk to FTP directly.
Every server asks for a login: it runs MLflow's basic-auth app with our guards (app.py, app name
flops-basic-auth), with the tenant's admin password and secret key from the secrets file. Its users and grants
live in the backend store: with MySQL/MariaDB in the tenant's second database <database>_auth (auth_store.py, which
also works around MLflow's auth migration failing there), with SQLite in a SQLite file beside the server.
A server is one process (runner.py, no `mlflow server` parent), started after the schema upgrade (tracking and
auth databases).

With tracking.tls the server speaks HTTPS only (uvicorn's ssl_certfile and ssl_keyfile, from copies in its own
folder; the key's path is in its arguments, never the key), and our clients verify it against the deployment's CA
(client_verify, client_env; MLflow's MLFLOW_TRACKING_SERVER_CERT_PATH), never "insecure".

Under `flops-mlops up` a server never runs as root: started as root, it runs as its tenant's own account
(configuration/accounts.py). Its private files (SQLite metadata and auth databases) live in
``<state_dir>/tenants/<tenant>/``, mode 0700, that account's.
"""

from __future__ import annotations

import os
import pwd
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import requests

from ..configuration import certificates
from ..configuration.accounts import own_tree
from ..configuration.secrets import Secrets, redact
from ..configuration.stack import StackConfig
from ..configuration.tracking import Tenant
from ..processes import ManagedProcess, as_account, open_log, private_dir, wait_until
from ..stores import ftp_client, mysql
from .limits import uvicorn_options

APP_NAME = "flops-basic-auth"  # entry point of app.create_app (pyproject.toml, group mlflow.app)


def backend_store_uri(config: StackConfig, tenant: Tenant, secrets: Secrets, mysql_ca: Path | None = None) -> str:
    """``mysql_ca``: the CA certificate the client verifies the MySQL server against (backend_store.tls), where
    that client can read it; default: the deployment's, beside the secrets file."""
    if config.backend_store.kind == "sqlite":
        return f"sqlite:///{sqlite_path(config, tenant)}"
    return mysql.tenant_uri(config, tenant, secrets.db_password(tenant.id), mysql_ca)


def tenant_dir(config: StackConfig, tenant: Tenant) -> Path:
    """The tracking server's private folder: SQLite metadata (embedded) and auth databases."""
    return config.state_dir / "tenants" / tenant.id


def sqlite_path(config: StackConfig, tenant: Tenant) -> Path:
    return tenant_dir(config, tenant) / "metadata.db"


def tls_paths(config: StackConfig, tenant: Tenant) -> tuple[Path, Path]:
    """The server's copies of its certificate and key (tracking.tls), in its own folder."""
    folder = tenant_dir(config, tenant)
    return folder / "https.crt", folder / "https.key"


def client_verify(config: StackConfig) -> str | bool:
    """What our requests clients verify the tracking servers against (``verify=``): the deployment's CA with
    tracking.tls, else (or with a certificate of the user's own and no tracking.tls_ca) the system's store."""
    ca = certificates.tracking_ca(config)
    return str(ca) if ca else True


def client_env(config: StackConfig, ca: Path | None = None) -> dict[str, str]:
    """MLflow's client setting for our CA (MLFLOW_TRACKING_SERVER_CERT_PATH) with tracking.tls; ``ca``: a copy the
    client's account can read (default: the deployment's, beside the secrets file)."""
    ca = ca or certificates.tracking_ca(config)
    return {"MLFLOW_TRACKING_SERVER_CERT_PATH": str(ca)} if ca else {}


def mysql_ca_path(config: StackConfig, tenant: Tenant) -> Path:
    """The server's copy of the deployment's CA certificate (backend_store.tls): its account may not reach the
    secrets file's folder."""
    return tenant_dir(config, tenant) / "mysql-ca.crt"


def auth_db_path(config: StackConfig, tenant: Tenant) -> Path:
    """The SQLite auth database (SQLite backend store); with MySQL, an earlier release's file, moved in once."""
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


def server_env(config: StackConfig, tenant: Tenant, secrets: Secrets, auth_db: Path,
               mysql_ca: Path | None = None, ftp_ca: Path | None = None) -> dict[str, str]:
    """The server's whole environment: store URIs, login settings (``auth_db``: its SQLite auth database; with a
    MySQL backend store only an earlier release's file, which `upgrade-schema` moves into MySQL once; ``mysql_ca``:
    its copy of the CA that signed the MySQL server's certificate, see backend_store_uri; ``ftp_ca``: the CA file
    that signed the FTPS store's certificate, default the deployment's, beside the secrets file)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "FLOPS_"))}
    env.update({
        "MLFLOW_BACKEND_STORE_URI": backend_store_uri(config, tenant, secrets, mysql_ca),
        "MLFLOW_ARTIFACTS_DESTINATION": artifacts_destination(config, tenant, secrets),
        "MLFLOW_AUTH_ADMIN_PASSWORD": secrets.admin_password(tenant.id),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.secret_key(tenant.id),
        "FLOPS_AUTH_DB": str(auth_db),
        "FLOPS_TENANT": tenant.id,  # names the tenant in the login audit lines (logins.py)
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true" if config.tracking.job_execution else "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        **ftp_client.environment(config, ftp_ca),  # our FTP artifact repository's timeouts (and FTPS CA)
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


def server_argv(config: StackConfig, tenant: Tenant, tls: tuple[Path, Path] | None = None) -> list[str]:
    """The server's command line (no secret in it): our single-process runner. ``tls``: (certificate, key) files
    it serves HTTPS with (tracking.tls; only their paths).

    With tracking.job_execution on it is `mlflow server` instead (mlflow_server_argv): only MLflow's CLI starts
    and supervises the job runner's processes.
    """
    if config.tracking.job_execution:
        return mlflow_server_argv(config, tenant, tls)
    t = config.tracking
    https = ["--ssl-certfile", str(tls[0]), "--ssl-keyfile", str(tls[1])] if tls else []
    return [sys.executable, "-m", RUNNER, "--host", t.host, "--port", str(config.tracking_port(tenant)),
            "--workers", str(t.workers), "--allowed-hosts", ",".join(allowed_hosts(config, tenant)), *https]


def mlflow_server_argv(config: StackConfig, tenant: Tenant, tls: tuple[Path, Path] | None = None) -> list[str]:
    """MLflow's own `mlflow server` with our login app: a CLI process that supervises its uvicorn child."""
    t = config.tracking
    https = f" --ssl-certfile {shlex.quote(str(tls[0]))} --ssl-keyfile {shlex.quote(str(tls[1]))}" if tls else ""
    return [sys.executable, "-m", "mlflow", "server", "--host", t.host, "--port", str(config.tracking_port(tenant)),
            "--serve-artifacts", "--app-name", APP_NAME, "--workers", str(t.workers),
            "--allowed-hosts", ",".join(allowed_hosts(config, tenant)), "--uvicorn-opts", uvicorn_options() + https]


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


def is_healthy(uri: str, verify: str | bool = True) -> bool:
    """Whether ``uri``/health answers 200; ``verify``: the CA to check an HTTPS server against (client_verify)."""
    try:
        return requests.get(f"{uri}/health", timeout=2, verify=verify).status_code == 200
    except requests.RequestException:
        return False


class TrackingServer:
    def __init__(self, config: StackConfig, tenant: Tenant):
        self.config = config
        self.tenant = tenant
        self.process = ManagedProcess(f"tracking-{tenant.id}", config.state_dir)
        self.started_at: float | None = None  # time.monotonic() of the last start
        host = "127.0.0.1" if config.tracking.host in ("0.0.0.0", "::") else config.tracking.host
        self.local_uri = f"{config.tracking_scheme}://{host}:{config.tracking_port(tenant)}"

    @property
    def verify(self) -> str | bool:
        """What our clients of this server verify it against (client_verify)."""
        return client_verify(self.config)

    def healthy(self) -> bool:
        return is_healthy(self.local_uri, self.verify)

    def start(self, secrets: Secrets, account: pwd.struct_passwd | None = None) -> None:
        """Start as ``account`` (accounts.tenant_account); its folders are made its own, closed to others."""
        data = tenant_dir(self.config, self.tenant)
        workdir = self.config.state_dir / "tracking" / self.tenant.id
        for parent in (data.parent, workdir.parent):
            private_dir(parent, 0o711 if account else 0o700)  # the account passes through to its own folder
        for folder in (data, workdir):
            private_dir(folder)
            if account:
                own_tree(folder, account)  # an earlier release ran every tenant as one account
        self._move_legacy_sqlite(account)
        mysql_ca = self._copy_mysql_ca(account)
        tls = self._copy_tls_files(account)
        env = {**server_env(self.config, self.tenant, secrets, auth_db_path(self.config, self.tenant), mysql_ca),
               "HOME": str(workdir)}
        upgrade_schema(self.process, env, account)
        self.process.start(server_argv(self.config, self.tenant, tls), env=env, cwd=workdir, account=account)
        self.started_at = time.monotonic()

    def _copy_mysql_ca(self, account: pwd.struct_passwd | None) -> Path | None:
        """With backend_store.tls: the deployment's CA certificate copied into the server's own folder."""
        if not certificates.mysql_tls(self.config):
            return None
        return copy_private(certificates.mysql_ca(self.config), mysql_ca_path(self.config, self.tenant), account)

    def _copy_tls_files(self, account: pwd.struct_passwd | None) -> tuple[Path, Path] | None:
        """With tracking.tls: the server's certificate and key copied into its own folder (read at each start, so
        a restart picks up renewed ones)."""
        if not self.config.tracking.tls:
            return None
        certificates.make_tracking_certificates(self.config)  # an older deployment's secrets: made when missing
        sources = certificates.tracking_files(self.config, self.tenant.id)
        targets = tls_paths(self.config, self.tenant)
        return copy_private(sources[0], targets[0], account), copy_private(sources[1], targets[1], account)

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
        wait_until(self.healthy, self.process,
                   f"tracking server of tenant {self.tenant.id} did not become healthy",
                   self.config.tracking.startup_timeout, progress=progress,
                   waiting_for=f"tracking server {self.tenant.id} ({self.local_uri}/health)",
                   since=self.started_at)

    def stop(self) -> bool:
        return self.process.stop()


def copy_private(source: Path, target: Path, account: pwd.struct_passwd | None = None) -> Path:
    """``source`` copied to ``target`` (mode 0600, ``account``'s when given), replacing it."""
    target.unlink(missing_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(source.read_bytes())
    if account:
        os.chown(target, account.pw_uid, account.pw_gid)
    return target


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
    from .auth_store import AuthStoreError, prepare

    try:
        prepare(dict(os.environ), say=lambda line: print(line, flush=True))
    except AuthStoreError as exc:
        print(f"auth database: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # MLflow's migrations: report without the password the URI holds
        message = redact(str(exc), [unquote(urlsplit(uri).password or "")])
        print(f"auth database: {type(exc).__name__}: {message}", file=sys.stderr)
        return 1
    print("auth schema is up to date")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["upgrade-schema"]:
        print("usage: python -m flops_mlops.tracking.server upgrade-schema  (URI in MLFLOW_BACKEND_STORE_URI)",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(_upgrade_from_env())
