"""One MLflow tracking server per tenant: its environment, command line, schema upgrade and health check.

Store URIs (which carry passwords) reach the server only through MLFLOW_BACKEND_STORE_URI and
MLFLOW_ARTIFACTS_DESTINATION, never through its arguments. Artifacts are proxied (--serve-artifacts)
to the tenant's FTP folder; there is no --default-artifact-root, so clients never talk to FTP directly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import requests

from .config import StackConfig, Tenant
from .processes import ManagedProcess, wait_until
from .secrets import Secrets, redact
from .stores import mysql


def backend_store_uri(config: StackConfig, tenant: Tenant, secrets: Secrets) -> str:
    if config.backend_store.kind == "sqlite":
        return f"sqlite:///{sqlite_path(config, tenant)}"
    return mysql.tenant_uri(config, tenant, secrets.db_password(tenant.id))


def sqlite_path(config: StackConfig, tenant: Tenant) -> Path:
    return config.state_dir / "sqlite" / f"{tenant.id}.db"


def artifacts_destination(config: StackConfig, tenant: Tenant, secrets: Secrets) -> str:
    store = config.artifact_store
    password = quote(secrets.ftp_password(tenant.id), safe="")
    return f"ftp://{tenant.ftp_user}:{password}@{store.host}:{store.port}{tenant.artifact_path}"


def mask(uri: str) -> str:
    """The URI with its password replaced by ***."""
    scheme, sep, rest = uri.partition("://")
    credentials, at, location = rest.rpartition("@")
    if not at or ":" not in credentials:
        return uri
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{location}"


def server_env(config: StackConfig, tenant: Tenant, secrets: Secrets) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "FLOPS_"))}
    env.update({
        "MLFLOW_BACKEND_STORE_URI": backend_store_uri(config, tenant, secrets),
        "MLFLOW_ARTIFACTS_DESTINATION": artifacts_destination(config, tenant, secrets),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true" if config.tracking.job_execution else "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    })
    return env


def server_argv(config: StackConfig, tenant: Tenant) -> list[str]:
    t = config.tracking
    port = config.tracking_port(tenant)
    allowed = ["localhost", f"localhost:{port}", "127.0.0.1", f"127.0.0.1:{port}", t.public_host,
               f"{t.public_host}:{port}", *t.allowed_hosts]
    return [sys.executable, "-m", "mlflow", "server", "--host", t.host, "--port", str(port),
            "--serve-artifacts", "--workers", str(t.workers),
            "--allowed-hosts", ",".join(dict.fromkeys(allowed))]


def upgrade_schema(process: ManagedProcess, env: dict[str, str]) -> None:
    """Bring the tenant's backend schema to this MLflow version (creates it on an empty database)."""
    with open(process.log_file, "ab") as log:
        log.write(b"\n--- mlflow db upgrade\n")
        log.flush()
        try:
            result = subprocess.run([sys.executable, "-m", "flops_mlops.tracking_server", "upgrade-schema"],
                                    env=env, stdout=log, stderr=subprocess.STDOUT, timeout=600)
        except subprocess.TimeoutExpired:
            raise process.failure(f"{process.name}: schema upgrade (mlflow db upgrade) did not finish in 600 s; "
                                  "is the backend store reachable?") from None
    if result.returncode != 0:
        raise process.failure(f"{process.name}: schema upgrade (mlflow db upgrade) failed")


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
        self.local_uri = f"http://{'127.0.0.1' if config.tracking.host in ('0.0.0.0', '::') else config.tracking.host}:{config.tracking_port(tenant)}"

    def start(self, secrets: Secrets) -> None:
        env = server_env(self.config, self.tenant, secrets)
        if self.config.backend_store.kind == "sqlite":
            sqlite_path(self.config, self.tenant).parent.mkdir(parents=True, exist_ok=True)
        self.process.log_file.parent.mkdir(parents=True, exist_ok=True)
        upgrade_schema(self.process, env)
        workdir = self.config.state_dir / "tracking" / self.tenant.id
        workdir.mkdir(parents=True, exist_ok=True)
        self.process.start(server_argv(self.config, self.tenant), env=env, cwd=workdir)

    def wait_healthy(self) -> None:
        wait_until(lambda: is_healthy(self.local_uri), self.process,
                   f"tracking server of tenant {self.tenant.id} did not become healthy",
                   self.config.tracking.startup_timeout)

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
        print("usage: python -m flops_mlops.tracking_server upgrade-schema  (URI in MLFLOW_BACKEND_STORE_URI)",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(_upgrade_from_env())
