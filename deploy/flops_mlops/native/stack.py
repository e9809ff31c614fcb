"""The stack on this machine: brings a configuration's stores and tracking servers up and takes them down.

Order on `up`: check everything that can be checked before starting anything (binaries, secrets, free
ports), then backend store, tenant provisioning, artifact store, schema upgrades, tracking servers.
If any step fails, whatever this call started is stopped again, so nothing is left half-started.
On a stack that is partly running, `up` starts only the services that are down and leaves the others alone;
`restart` stops and starts one tenant's tracking server.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..configuration.accounts import stack_account, tenant_account
from ..configuration.schema import ConfigError
from ..configuration.secrets import Secrets
from ..configuration.stack import StackConfig
from ..processes import ManagedProcess, port_is_free, private_dir
from ..stores import mysql
from ..stores.vsftpd import ManagedVsftpd, remove_pam_service
from ..tracking.server import TrackingServer
from .stores import ARTIFACTS, BACKEND, Progress, start_stores

Accounts = dict[str, pwd.struct_passwd | None]  # tenant id -> the account its servers run as (None: this user)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Service:
    """A process the stack runs, for status and for stopping in order."""

    name: str
    kind: str
    address: str
    process: ManagedProcess


class Stack:
    def __init__(self, config: StackConfig, progress: Progress = _stderr):
        self.config = config
        self.progress = progress
        self.trackers = [TrackingServer(config, tenant) for tenant in config.tenants]

    # --- what the configuration runs ---

    def services(self) -> list[Service]:
        """Managed services in start order."""
        c, state = self.config, self.config.state_dir
        found = []
        b = c.backend_store
        if b.kind == "mysql" and b.managed:
            found.append(Service(BACKEND, "mysql", f"{b.host}:{b.port}", ManagedProcess(BACKEND, state)))
        a = c.artifact_store
        if a.managed:
            found.append(Service(ARTIFACTS, a.kind, f"{a.host}:{a.port}", ManagedProcess(ARTIFACTS, state)))
        for tracker in self.trackers:
            found.append(Service(tracker.process.name, "mlflow", tracker.local_uri.partition("://")[2],
                                 tracker.process))
        return found

    # --- up ---

    def up(self) -> str:
        """Start what is not running: everything ("started"), only the services that are down, the others left
        untouched ("healed"), or nothing ("running")."""
        services = self.services()
        running = {s.name for s in services if s.process.is_running()}
        if len(running) == len(services):
            self.progress(f"stack {self.config.name} is already running")
            return "running"
        down = [s.name for s in services if s.name not in running]
        if running:
            self.progress(f"stack {self.config.name}: starting {', '.join(down)}; leaving {', '.join(sorted(running))} "
                          "running")
        secrets, accounts = self.preflight(running)
        # Closed to others; as root, service accounts (vsftpd's, the stack's, the tenants') pass through to their
        # own folders (0711: they may enter, not list).
        private_dir(self.config.state_dir, 0o711 if os.geteuid() == 0 else 0o700)
        started: list[Callable[[], bool]] = []
        try:
            start_stores(self.config, secrets, started, running, self.progress)
            self._start_trackers([t for t in self.trackers if t.process.name not in running], secrets, accounts,
                                 started)
            return "healed" if running else "started"
        except BaseException:
            self.progress("start failed; stopping what this call started")
            for stop in reversed(started):
                stop()
            raise

    def _start_trackers(self, trackers: list[TrackingServer], secrets: Secrets, accounts: Accounts,
                        started: list[Callable[[], bool]]) -> None:
        """Start ``trackers`` (each added to ``started``), each as its tenant's account, then wait until each
        answers /health."""
        for tracker in trackers:
            account = accounts[tracker.tenant.id]
            self._backup_before_upgrade(tracker, secrets)
            self.progress(f"tracking server {tracker.tenant.id}: upgrading schema, starting on "
                          f"{tracker.local_uri}" + (f" as {account.pw_name}" if account else ""))
            started.append(tracker.stop)
            tracker.start(secrets, account)
        for tracker in trackers:
            tracker.wait_healthy(self.progress)

    def _backup_before_upgrade(self, tracker: TrackingServer, secrets: Secrets) -> Path | None:
        """Before a start that will upgrade the tenant's schema (its databases are at an older MLflow's revision),
        back the tenant up into <state_dir>/backups: the roll-back is restoring that archive with the older MLflow
        (docs/backup.md). A schema that a newer MLflow wrote is refused: this one cannot run on it."""
        from ..backup.command import auth_uri, backup_tenant
        from ..tracking import schema
        from ..tracking.server import auth_db_path, backend_store_uri, sqlite_path

        c, tenant = self.config, tracker.tenant
        sqlite_auth = auth_db_path(c, tenant)  # with MySQL only an earlier release's file, moved in at this start
        databases = {"auth": (auth_uri(c, tenant, secrets) if c.backend_store.kind == "mysql" else
                              f"sqlite:///{sqlite_auth}" if sqlite_auth.exists() else None),
                     "tracking": (backend_store_uri(c, tenant, secrets)
                                  if c.backend_store.kind == "mysql" or sqlite_path(c, tenant).exists() else None)}
        heads, behind = schema.heads(), []
        for which, uri in databases.items():
            table = schema.AUTH_VERSION_TABLE if which == "auth" else schema.TRACKING_VERSION_TABLE
            current = schema.revision(uri, table) if uri else None
            if current is None or current == heads[which]:
                continue
            if schema.unknown_to_this_mlflow(which, current):
                raise ConfigError(f"tenant {tenant.id}: its {which} database is at schema revision {current}, which "
                                  f"MLflow {schema.mlflow_version()} does not know (a newer MLflow wrote it); install "
                                  "that MLflow again, or restore a backup taken before it (docs/backup.md)")
            behind.append(f"{which} {current} -> {heads[which]}")
        if not behind:
            return None
        self.progress(f"tracking server {tenant.id}: MLflow {schema.mlflow_version()} will upgrade its schema "
                      f"({'; '.join(behind)}); backing the tenant up first")
        folder = c.state_dir / "backups"
        private_dir(folder)
        path = backup_tenant(c, tenant, secrets, folder, self.progress)
        self.progress(f"tracking server {tenant.id}: the roll-back is: flops-mlops restore --tenant {tenant.id} "
                      f"--force {path} (with the MLflow that wrote it)")
        return path

    def restart(self, tenant_id: str) -> None:
        """Stop one tenant's tracking server and start it again; every other service is left alone. Everything
        that can be checked (secrets, account, the other ports) is checked before it stops."""
        tracker = next(t for t in self.trackers if t.tenant.id == self.config.tenant(tenant_id).id)
        running = {s.name for s in self.services() if s.process.is_running()}
        secrets, accounts = self.preflight(running | {tracker.process.name})
        if tracker.stop():
            self.progress(f"tracking server {tenant_id}: stopped")
        started: list[Callable[[], bool]] = []
        try:
            self._start_trackers([tracker], secrets, accounts, started)
        except BaseException:
            for stop in started:
                stop()
            raise

    def preflight(self, running: set[str] = frozenset()) -> tuple[Secrets, Accounts]:
        """Everything that can fail before a process starts: secrets, accounts (each tenant's is created if
        missing), binaries, ports (except those of the services in ``running``, which hold their own ports)."""
        c = self.config
        secrets = Secrets.load(c)
        stack_account(c)  # the embedded FTP store's, and the base of the tenants' names
        accounts = {t.tenant.id: tenant_account(c, t.tenant, self.progress) for t in self.trackers}
        if c.backend_store.kind == "mysql" and c.backend_store.managed and BACKEND not in running:
            mysql.ManagedMySQL(c, secrets).check_binaries()
        if c.artifact_store.managed and c.artifact_store.kind == "vsftpd" and ARTIFACTS not in running:
            ManagedVsftpd(c, secrets).check_binaries()
        wanted = [(c.tracking.host, c.tracking_port(t.tenant), f"tracking server of tenant {t.tenant.id}")
                  for t in self.trackers if t.process.name not in running]
        if c.artifact_store.managed and ARTIFACTS not in running:
            a = c.artifact_store
            wanted.append((a.host, a.port, "artifact_store.port"))
            wanted += [(a.host, p, "artifact_store.passive_ports")
                       for p in range(a.passive_ports[0], a.passive_ports[1] + 1)]
        if c.backend_store.kind == "mysql" and c.backend_store.managed and BACKEND not in running:
            wanted.append((c.backend_store.host, c.backend_store.port, "backend_store.port"))
        for host, port, what in wanted:
            if not port_is_free(host, port):
                raise ConfigError(f"{c.source}: port {port} on {host} ({what}) is already in use; "
                                  "stop what uses it or choose another port")
        return secrets, accounts

    # --- foreground supervision ---

    def supervise(self) -> int:
        """Block until Ctrl-C/SIGTERM (then stop everything, 0) or until a service exits (stop, 1)."""
        stop_requested = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop_requested.set())
        while not stop_requested.wait(1.0):
            dead = [s for s in self.services() if not s.process.is_running()]
            if dead:
                service = dead[0]
                error = service.process.failure(f"{service.name} exited")
                self.progress(str(error))
                self.down()
                return 1
        self.progress("stopping")
        self.down()
        return 0

    # --- down ---

    def served(self) -> list[Service]:
        """The model servers `serve` started here (not part of `up`: stopped by `down`, shown by `status`)."""
        from ..serving.service import recorded_services

        return [Service(s.name, "model", s.address, s.process) for s in recorded_services(self.config)]

    def down(self, purge: bool = False) -> list[str]:
        stopped = []
        for service in [*self.served(), *reversed(self.services())]:
            if service.process.stop():
                stopped.append(service.name)
                self.progress(f"stopped {service.name}")
        if purge:
            if self.config.artifact_store.kind == "vsftpd":
                remove_pam_service(self.config)
            if self.config.state_dir.exists():
                shutil.rmtree(self.config.state_dir)
                self.progress(f"removed {self.config.state_dir}")
        return stopped
