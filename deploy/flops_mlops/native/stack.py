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

from ..configuration.schema import ConfigError
from ..configuration.secrets import Secrets
from ..configuration.stack import StackConfig
from ..processes import ManagedProcess, port_is_free, private_dir
from ..stores import mysql
from ..stores.vsftpd import ManagedVsftpd, remove_pam_service
from ..tracking.server import TrackingServer, service_account
from .stores import ARTIFACTS, BACKEND, Progress, start_stores


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
            found.append(Service(tracker.process.name, "mlflow", tracker.local_uri.removeprefix("http://"),
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
        secrets, account = self.preflight(running)
        # Closed to others; as root, service accounts (vsftpd's, the tracking servers') pass through to their
        # own folders (0711: they may enter, not list).
        private_dir(self.config.state_dir, 0o711 if os.geteuid() == 0 else 0o700)
        started: list[Callable[[], bool]] = []
        try:
            start_stores(self.config, secrets, started, running, self.progress)
            self._start_trackers([t for t in self.trackers if t.process.name not in running], secrets, account,
                                 started)
            return "healed" if running else "started"
        except BaseException:
            self.progress("start failed; stopping what this call started")
            for stop in reversed(started):
                stop()
            raise

    def _start_trackers(self, trackers: list[TrackingServer], secrets: Secrets, account: pwd.struct_passwd | None,
                        started: list[Callable[[], bool]]) -> None:
        """Start ``trackers`` (each added to ``started``), then wait until each answers /health."""
        for tracker in trackers:
            self.progress(f"tracking server {tracker.tenant.id}: upgrading schema, starting on "
                          f"{tracker.local_uri}" + (f" as {account.pw_name}" if account else ""))
            started.append(tracker.stop)
            tracker.start(secrets, account)
        for tracker in trackers:
            tracker.wait_healthy(self.progress)

    def restart(self, tenant_id: str) -> None:
        """Stop one tenant's tracking server and start it again; every other service is left alone. Everything
        that can be checked (secrets, account, the other ports) is checked before it stops."""
        tracker = next(t for t in self.trackers if t.tenant.id == self.config.tenant(tenant_id).id)
        running = {s.name for s in self.services() if s.process.is_running()}
        secrets, account = self.preflight(running | {tracker.process.name})
        if tracker.stop():
            self.progress(f"tracking server {tenant_id}: stopped")
        started: list[Callable[[], bool]] = []
        try:
            self._start_trackers([tracker], secrets, account, started)
        except BaseException:
            for stop in started:
                stop()
            raise

    def preflight(self, running: set[str] = frozenset()) -> tuple[Secrets, pwd.struct_passwd | None]:
        """Everything that can fail before a process starts: secrets, accounts, binaries, ports (except those
        of the services in ``running``, which hold their own ports)."""
        c = self.config
        secrets = Secrets.load(c)
        account = service_account(c)
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
        return secrets, account

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
