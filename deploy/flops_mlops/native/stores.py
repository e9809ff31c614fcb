"""The stores on this machine, as `flops-mlops up` starts them: the backend store (a private MariaDB/MySQL, or an
existing server) with every tenant's database and user, and the artifact store (vsftpd or the embedded FTP
server). Each started process is added to ``started`` first, so a failed `up` stops it again."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from ..configuration import certificates
from ..configuration.secrets import Secrets
from ..configuration.stack import StackConfig
from ..processes import ManagedProcess, port_answers, wait_until
from ..stores import mysql
from ..stores.vsftpd import ManagedVsftpd

Progress = Callable[[str], None]
BACKEND, ARTIFACTS = "backend-store", "artifact-store"  # the stores' service names


def start_stores(c: StackConfig, secrets: Secrets, started: list[Callable[[], bool]], running: set[str],
                 progress: Progress) -> None:
    """The stores that are not ``running``; then every tenant's database and user (idempotent)."""
    if c.backend_store.kind == "mysql":
        if c.backend_store.managed and BACKEND in running:
            admin = mysql.ManagedMySQL(c, secrets).admin
        elif c.backend_store.managed:
            server = mysql.ManagedMySQL(c, secrets)
            progress(f"backend store: starting MySQL/MariaDB on {c.backend_store.host}:{c.backend_store.port}")
            started.append(server.stop)  # before start: a server that never gets ready is stopped too
            server.start(progress)
            admin = server.admin
        else:
            ca = certificates.mysql_ca(c) if certificates.mysql_tls(c) else None
            admin = mysql.AdminConnection(c.backend_store.host, c.backend_store.port,
                                          c.backend_store.admin_user, secrets.mysql_admin_password, ca=ca)
        progress(f"backend store: provisioning {len(c.tenants)} tenant database(s)")
        mysql.provision_tenants(admin, c, secrets)
    if c.artifact_store.managed and ARTIFACTS not in running:
        a = c.artifact_store
        progress(f"artifact store: starting {a.kind} FTP on {a.host}:{a.port}")
        if a.kind == "vsftpd":
            ftp = ManagedVsftpd(c, secrets)
            started.append(ftp.stop)
            ftp.start(progress)
        else:
            start_embedded_ftp(c, started, progress)


def start_embedded_ftp(c: StackConfig, started: list[Callable[[], bool]], progress: Progress) -> None:
    a = c.artifact_store
    process = ManagedProcess(ARTIFACTS, c.state_dir)
    process.start([sys.executable, "-m", "flops_mlops.stores.embedded_ftp", str(c.source)], env=_child_env())
    started.append(process.stop)
    wait_until(lambda: port_answers(a.host, a.port), process, "artifact store (embedded FTP) did not come up", 30,
               progress=progress, waiting_for=f"artifact store (embedded FTP, {a.host}:{a.port})")


def _child_env() -> dict[str, str]:
    """The embedded FTP server's environment: it reads its passwords from the secrets file, nothing else."""
    return {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "FLOPS_"))}
