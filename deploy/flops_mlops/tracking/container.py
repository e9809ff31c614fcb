"""Entrypoint of the tracking-server image (compose.yaml): one tenant's MLflow server in a container.

compose.yaml passes only plain settings and the tenant's passwords by environment; this module builds the
store URIs from them with the same code as the native stack (tracking/server.py: server_env, server_argv), so the
passwords reach MLflow only through MLFLOW_BACKEND_STORE_URI / MLFLOW_ARTIFACTS_DESTINATION and never appear
in a command line. It upgrades the schema (`mlflow db upgrade`, run in-process from the environment), then
replaces itself with the tracking server: one process (runner.py, as natively), serving artifacts.

Environment (defaults in brackets):
  FLOPS_TENANT [default]             tenant id; names the database, database user and FTP user
  FLOPS_DB_HOST / FLOPS_DB_PORT      backend store [backend-store / 3306]
  FLOPS_DB_PASSWORD                  the tenant's database password (required)
  FLOPS_DB_TLS [false]               true: MySQL over TLS (backend_store.tls), the server's certificate verified
                                     (chain and host name) against the CA certificate in FLOPS_DB_CA_FILE
  FLOPS_DB_CA_FILE [/etc/flops-tls/ca.crt]  the deployment's CA certificate (compose mounts it there)
  FLOPS_FTP_HOST / FLOPS_FTP_PORT    artifact store [artifact-store / 21]
  FLOPS_FTP_PASSWORD                 the tenant's FTP password (required)
  FLOPS_FTP_TLS [false]              true: explicit FTPS (artifact_store.tls), the store's certificate verified
                                     (chain and host name) against the CA certificate in FLOPS_FTP_CA_FILE
  FLOPS_FTP_CA_FILE [/etc/flops-tls/ca.crt]  the deployment's CA certificate (compose mounts it there)
  FLOPS_TLS_CERTIFICATE_B64, FLOPS_TLS_KEY_B64, FLOPS_TLS_CA_B64, FLOPS_FTP_CA_B64
                                     Oakestra, which passes no files: those PEM files as base64url (push fills
                                     them in from beside the secrets file); each is written to a private file
                                     (0600, in a 0700 folder) whose path the matching *_FILE setting then names
  FLOPS_FTP_CONNECT_TIMEOUT [10]     seconds to connect to and log in to the FTP store (artifact_store.connect_timeout)
  FLOPS_FTP_DATA_TIMEOUT [60]        seconds any later FTP command or transfer may stall (artifact_store.data_timeout)
  FLOPS_ARTIFACT_QUOTA [10GB]        most bytes the tenant's store folder may hold, 0: no limit (artifact_store.quota)
  FLOPS_ADMIN_PASSWORD               password of the server's admin user (MLflow basic auth; required)
  FLOPS_SECRET_KEY                   the server's Flask secret key (required)
  FLOPS_AUTH_DB [/srv/mlflow/auth/auth.db]  an earlier release's SQLite auth database, moved once into the backend
                                     store's mlflow_<tenant>_auth, where the users and grants live (auth_store.py)
  FLOPS_FL_USERS []                  FL project users to ensure, "project:password,...": user fl-<project>
                                     gets EDIT on that project's experiment and registered model only
  FLOPS_SERVE_USERS []               model server users to ensure, "project:password,...": user serve-<project>
                                     gets READ on that project's registered model only
  FLOPS_PORT [5000]                  port the server listens on inside the container
  FLOPS_PUBLIC_HOST [127.0.0.1]      host name users put in the UI URL
  FLOPS_PUBLIC_PORT [5000]           port published on the host (accepted in the Host header)
  FLOPS_ALLOWED_HOSTS []             extra Host header values, comma-separated (--allowed-hosts)
  FLOPS_WORKERS [1]                  uvicorn workers (1: the server is one process)
  FLOPS_TLS [false]                  true: HTTPS only (tracking.tls), with the certificate and key files below
  FLOPS_TLS_CERTIFICATE_FILE [/etc/flops-tls/tracking.crt]  the server's certificate (PEM; compose: the copy
                                     tracking-volumes makes for the tenant's uid, /srv/mlflow/auth/tls/)
  FLOPS_TLS_KEY_FILE [/etc/flops-tls/tracking.key]  its private key (PEM, readable by the server's uid only)
  FLOPS_TLS_CA_FILE [/etc/flops-tls/ca.crt]  the CA the server's own clients verify it against (the healthcheck,
                                     the thread that creates the FL and serve users)
Arguments after `tracking-server` are appended to the runner's (`python -m flops_mlops.tracking.runner --help`).

The image's healthcheck is a shell script with curl (deploy/images/python/tracking-healthcheck.sh): no Python
interpreter starts every few seconds on an idle node.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from ..configuration import pem_env
from ..configuration.schema import ConfigError
from ..configuration.secrets import (
    Secrets,
    admin_password_key,
    db_password_key,
    ftp_password_key,
    refuse_placeholders,
    secret_key_key,
)
from ..configuration.stack import StackConfig, validate_tenant_id
from ..configuration.stores import ArtifactStore, BackendStore
from ..configuration.tracking import Tenant, Tracking
from ..configuration.values import AllowedHost, Host, Port, ProjectName, Size, problem, read
from .server import mask, server_argv, server_env

SERVICE_NAME = "tracking-server"
AUTH_DB = "/srv/mlflow/auth/auth.db"
FTP_CA_FILE = "/etc/flops-tls/ca.crt"
DB_CA_FILE = TLS_CA_FILE = FTP_CA_FILE  # one CA signs every certificate of a deployment
TLS_CERTIFICATE_FILE, TLS_KEY_FILE = "/etc/flops-tls/tracking.crt", "/etc/flops-tls/tracking.key"
PASSWORDS = ("FLOPS_DB_PASSWORD", "FLOPS_FTP_PASSWORD", "FLOPS_ADMIN_PASSWORD", "FLOPS_SECRET_KEY")
FL_USER = re.compile(r"^(?P<project>[^:,]+):(?P<password>[A-Za-z0-9_-]{12,})$")


def _setting(env: dict[str, str], key: str, default: str | None = None) -> str:
    value = env.get(key, "").strip() or default
    if value is None:
        raise ConfigError(f"environment: {key}: required (compose.yaml sets it from .env)")
    return value


def _host(env: dict[str, str], key: str, default: str) -> str:
    value = _setting(env, key, default)
    if (why := problem(Host, value)) is not None:
        raise ConfigError(f"environment: {key}: {why}")
    return value


def _port(env: dict[str, str], key: str, default: int) -> int:
    value = _setting(env, key, str(default))
    if not value.isdigit() or problem(Port, int(value)) is not None:
        raise ConfigError(f"environment: {key}: expected a TCP port 1-65535, got {value!r}")
    return int(value)


def _seconds(env: dict[str, str], key: str, default: int) -> int:
    value = _setting(env, key, str(default))
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"environment: {key}: expected a whole number of seconds, at least 1, got {value!r}")
    return int(value)


def _flag(env: dict[str, str], key: str) -> bool:
    value = _setting(env, key, "false").lower()
    if value not in ("true", "false"):
        raise ConfigError(f"environment: {key}: expected true or false, got {value!r}")
    return value == "true"


def _pem_file(env: dict[str, str], key: str, default: str, flag: str, what: str, marker: str = "CERTIFICATE") -> Path:
    """The file named by ``key`` (default ``default``), readable and holding a PEM block ``marker`` (``flag`` is
    the switch that asks for it)."""
    path = Path(_setting(env, key, default))
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"environment: {key}: cannot read {what} {str(path)!r} ({flag} is true): "
                          f"{exc.strerror if isinstance(exc, OSError) else exc}; "
                          "`flops-mlops secrets init` makes it beside the secrets file") from None
    if f"BEGIN {marker}" not in text and not (marker == "PRIVATE KEY" and "PRIVATE KEY-----" in text):
        raise ConfigError(f"environment: {key}: {str(path)!r} holds no PEM {marker.lower()}")
    return path


def ftp_ca_file(env: dict[str, str]) -> Path | None:
    """With FLOPS_FTP_TLS: the CA certificate the FTP store's certificate must verify against (readable)."""
    if not _flag(env, "FLOPS_FTP_TLS"):
        return None
    return _pem_file(env, "FLOPS_FTP_CA_FILE", FTP_CA_FILE, "FLOPS_FTP_TLS", "the CA certificate")


def db_ca_file(env: dict[str, str]) -> Path | None:
    """With FLOPS_DB_TLS: the CA certificate the MySQL server's certificate must verify against (readable)."""
    if not _flag(env, "FLOPS_DB_TLS"):
        return None
    return _pem_file(env, "FLOPS_DB_CA_FILE", DB_CA_FILE, "FLOPS_DB_TLS", "the CA certificate")


def tls_files(env: dict[str, str]) -> tuple[Path, Path] | None:
    """With FLOPS_TLS: (certificate, key) files the server serves HTTPS with, both readable PEM."""
    if not _flag(env, "FLOPS_TLS"):
        return None
    return (_pem_file(env, "FLOPS_TLS_CERTIFICATE_FILE", TLS_CERTIFICATE_FILE, "FLOPS_TLS", "the certificate"),
            _pem_file(env, "FLOPS_TLS_KEY_FILE", TLS_KEY_FILE, "FLOPS_TLS", "the private key", "PRIVATE KEY"))


def tls_ca_file(env: dict[str, str]) -> Path | None:
    """With FLOPS_TLS: the CA certificate the server's own clients verify it against."""
    if not _flag(env, "FLOPS_TLS"):
        return None
    return _pem_file(env, "FLOPS_TLS_CA_FILE", TLS_CA_FILE, "FLOPS_TLS", "the CA certificate")


# Oakestra: PEM files as base64url variables -> the file settings that name them once written (pem_files_from_b64).
PEM_VARIABLES = {"FLOPS_TLS_CERTIFICATE_B64": ("FLOPS_TLS_CERTIFICATE_FILE", "https.crt"),
                 "FLOPS_TLS_KEY_B64": ("FLOPS_TLS_KEY_FILE", "https.key"),
                 "FLOPS_TLS_CA_B64": ("FLOPS_TLS_CA_FILE", "ca.crt"),
                 "FLOPS_FTP_CA_B64": ("FLOPS_FTP_CA_FILE", "ftp-ca.crt")}


def pem_files_from_b64(env: dict[str, str]) -> dict[str, str]:
    """Each *_B64 variable of PEM_VARIABLES set in ``env`` written to a private file (pem_env.write_files); the
    *_FILE settings that name them, to put over ``env``."""
    try:
        paths = pem_env.write_files(env, {key: name for key, (_, name) in PEM_VARIABLES.items()})
    except pem_env.PemError as exc:
        raise ConfigError(str(exc)) from None
    return {PEM_VARIABLES[key][0]: str(path) for key, path in paths.items()}


def _size(env: dict[str, str], key: str) -> int:
    value = env.get(key, "").strip()
    if not value:
        return ArtifactStore.model_fields["quota"].default
    if (why := problem(Size, value)) is not None:
        raise ConfigError(f"environment: {key}: {why}")
    return read(Size, value)


def stack_from_env(env: dict[str, str]) -> tuple[StackConfig, Tenant, Secrets]:
    """The one-tenant stack a tracking-server container serves, from its environment."""
    tenant = Tenant(id=validate_tenant_id(_setting(env, "FLOPS_TENANT", "default"), "environment: FLOPS_TENANT"))
    port = _port(env, "FLOPS_PORT", 5000)
    public_host = _host(env, "FLOPS_PUBLIC_HOST", "127.0.0.1")
    public_port = _port(env, "FLOPS_PUBLIC_PORT", 5000)
    extra = [h.strip() for h in env.get("FLOPS_ALLOWED_HOSTS", "").split(",") if h.strip()]
    for host in extra:
        if problem(AllowedHost, host) is not None:
            raise ConfigError(f"environment: FLOPS_ALLOWED_HOSTS: {host!r} is not a host name or host:port")
    workers = _setting(env, "FLOPS_WORKERS", "1")
    if not workers.isdigit() or int(workers) < 1:
        raise ConfigError(f"environment: FLOPS_WORKERS: expected a positive integer, got {workers!r}")
    allowed = [f"localhost:{public_port}", f"127.0.0.1:{public_port}", f"{public_host}:{public_port}",
               f"127.0.0.1:{port}", SERVICE_NAME, f"{SERVICE_NAME}:{port}", *extra]
    config = StackConfig(
        name="compose", state_dir=Path("/nonexistent"), secrets_file=Path("<environment>"), tenants=[tenant],
        backend_store=BackendStore(kind="mysql", managed=False, host=_host(env, "FLOPS_DB_HOST", "backend-store"),
                                   port=_port(env, "FLOPS_DB_PORT", 3306), tls=_flag(env, "FLOPS_DB_TLS")),
        artifact_store=ArtifactStore(kind="vsftpd", managed=False,
                                     host=_host(env, "FLOPS_FTP_HOST", "artifact-store"),
                                     port=_port(env, "FLOPS_FTP_PORT", 21),
                                     connect_timeout=_seconds(env, "FLOPS_FTP_CONNECT_TIMEOUT", 10),
                                     data_timeout=_seconds(env, "FLOPS_FTP_DATA_TIMEOUT", 60),
                                     quota=_size(env, "FLOPS_ARTIFACT_QUOTA"),
                                     tls=_flag(env, "FLOPS_FTP_TLS")),
        tracking=Tracking(host="0.0.0.0", base_port=port, public_host=public_host, workers=int(workers),
                          job_execution=False, allowed_hosts=allowed),
    ).located(Path("<environment>"))
    refuse_placeholders({key: _setting(env, key) for key in PASSWORDS}, "environment")
    secrets = Secrets(Path("<environment>"), {
        db_password_key(tenant.id): _setting(env, "FLOPS_DB_PASSWORD"),
        ftp_password_key(tenant.id): _setting(env, "FLOPS_FTP_PASSWORD"),
        admin_password_key(tenant.id): _setting(env, "FLOPS_ADMIN_PASSWORD"),
        secret_key_key(tenant.id): _setting(env, "FLOPS_SECRET_KEY"),
    })
    return config, tenant, secrets


def fl_users(env: dict[str, str], key: str = "FLOPS_FL_USERS") -> str:
    """FLOPS_FL_USERS (or FLOPS_SERVE_USERS) checked: "project:password" items, comma-separated (project names as
    FL projects)."""
    value = env.get(key, "").strip()
    for item in filter(None, value.split(",")):
        match = FL_USER.fullmatch(item)
        if not match or problem(ProjectName, match["project"]) is not None:
            shown = item.split(":", 1)[0]
            raise ConfigError(f"environment: {key}: item for {shown!r} is not project:password (a project "
                              "name of letters and digits, a URL-safe password of at least 12 characters)")
    return value


def auth_db(env: dict[str, str]) -> Path:
    path = Path(_setting(env, "FLOPS_AUTH_DB", AUTH_DB))
    if not path.is_absolute():
        raise ConfigError(f"environment: FLOPS_AUTH_DB: expected an absolute path, got {str(path)!r}")
    return path


def run_tracking_server(extra_args: list[str]) -> int:
    try:
        settings = dict(os.environ)
        settings.update(pem_files_from_b64(settings))  # Oakestra: the PEM files come as base64url variables
        config, tenant, secrets = stack_from_env(settings)
        users, database = fl_users(settings), auth_db(settings)
        readers = fl_users(settings, "FLOPS_SERVE_USERS")
        ftp_ca, db_ca = ftp_ca_file(settings), db_ca_file(settings)
        tls, tls_ca = tls_files(settings), tls_ca_file(settings)
    except ConfigError as exc:
        print(f"tracking-server: {exc}", file=sys.stderr)
        return 2
    # Drops FLOPS_* (the passwords) from what MLflow sees; with FTPS adds the CA's PEM text (FLOPS_FTP_CA_PEM);
    # with MySQL TLS the backend store URI names the CA file (ssl_ca) and checks the host name.
    env = server_env(config, tenant, secrets, database, mysql_ca=db_ca, ftp_ca=ftp_ca)
    scheme = "https" if tls else "http"
    if users or readers:
        env.update({"FLOPS_FL_USERS": users, "FLOPS_SERVE_USERS": readers,
                    "FLOPS_LOCAL_URI": f"{scheme}://127.0.0.1:{config.tracking.base_port}"})
        if tls_ca is not None:
            env["MLFLOW_TRACKING_SERVER_CERT_PATH"] = str(tls_ca)
    print(f"tracking-server: tenant {tenant.id}; backend {mask(env['MLFLOW_BACKEND_STORE_URI'])}; "
          f"artifacts {mask(env['MLFLOW_ARTIFACTS_DESTINATION'])}", flush=True)
    upgrade = subprocess.run([sys.executable, "-m", "flops_mlops.tracking.server", "upgrade-schema"], env=env)
    if upgrade.returncode != 0:
        print("tracking-server: schema upgrade (mlflow db upgrade) failed", file=sys.stderr)
        return 1
    argv = server_argv(config, tenant, tls) + extra_args
    public_port = os.environ.get("FLOPS_PUBLIC_PORT", "").strip() or "5000"
    print(f"tracking-server: {' '.join(argv[1:])}; UI at {scheme}://{config.tracking.public_host}:{public_port}",
          flush=True)
    os.execve(argv[0], argv, env)
    return 1  # not reached


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "tracking-server":
        print("usage: python -m flops_mlops.tracking.container tracking-server [tracking_runner arguments...]",
              file=sys.stderr)
        return 2
    return run_tracking_server(args[1:])


if __name__ == "__main__":
    sys.exit(main())
