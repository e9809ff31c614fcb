"""Long-running services as systemd units: rendered, started, enabled, restarted when their files change.

This is pyinfra's own idiom: one ``systemd.service(running=True, enabled=True, restarted=..., daemon_reload=...)``
per service, whose ``restarted`` and ``daemon_reload`` say whether the unit file or a trigger (an environment or
settings file) will change in this apply (``will_change``, known when the deploy is planned, so a dry run shows
the restart too). A service is started only when it is not running, so a second apply changes nothing. Hosts
without systemd are not served by these deploys: `flops-mlops up` runs the stack there (docs/native.md).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files, server, systemd

from .settings import TEMPLATES, TRIM


@dataclass(frozen=True)
class Service:
    name: str                     # unit name without .service
    description: str
    argv: list[str]               # ExecStart; argv[0] is an absolute path
    ready: str                    # shell test that succeeds once the service answers
    timeout: int = 60             # seconds to wait for ``ready``
    env_file: str | None = None   # KEY='value' lines (systemd's EnvironmentFile)
    workdir: str | None = None
    user: str = "root"            # the account it runs as (User=, which applies to ExecStartPre too)
    before_start: list[list[str]] = field(default_factory=list)  # ExecStartPre commands
    after: tuple[str, ...] = ()   # units on the same host that must be up first (After= and Wants=)


def unit_path(svc: Service) -> str:
    return f"/etc/systemd/system/{svc.name}.service"


def _q(value: str) -> str:
    return shlex.quote(value)


def wait_command(name: str, timeout: int, ready: str) -> str:
    """Poll ``ready`` once a second; fail early if the unit stopped, naming where its log is."""
    alive = f"systemctl is-active --quiet {_q(name)}"
    return (f"i=0; until {ready}; do "
            f"if ! {alive}; then echo {_q(f'{name} stopped while starting; see journalctl -u {name}')} >&2; exit 1; "
            f"fi; i=$((i+1)); if [ $i -ge {timeout} ]; then "
            f"echo {_q(f'{name} not ready after {timeout} s; see journalctl -u {name}')} >&2; exit 1; fi; "
            "sleep 1; done")


UNIT_TEMPLATE = TEMPLATES / "unit.service.j2"


def unit_data(svc: Service) -> dict:
    """What unit.service.j2 is rendered with."""
    return {"description": svc.description, "exec_start": shlex.join(svc.argv),
            "exec_start_pre": [shlex.join(argv) for argv in svc.before_start],
            "env_file": svc.env_file, "workdir": svc.workdir, "run_as": svc.user, "after": list(svc.after)}


def ensure_running(svc: Service, triggers: list[OperationMeta]) -> None:
    """Render the unit; start and enable the service; restart it (reloading systemd if the unit file changed)
    when the unit or a trigger changes in this apply; wait until it answers after a (re)start."""
    unit = files.template(name=f"Render unit {svc.name}", src=str(UNIT_TEMPLATE), dest=unit_path(svc),
                          mode="644", jinja_env_kwargs=dict(TRIM), **unit_data(svc))
    unit_changes = unit.will_change
    started = systemd.service(name=f"Start and enable {svc.name}, restart it when its files change",
                              service=f"{svc.name}.service", running=True, enabled=True,
                              restarted=unit_changes or any(t.will_change for t in triggers),
                              daemon_reload=unit_changes)
    server.shell(name=f"Wait for {svc.name}", commands=[wait_command(svc.name, svc.timeout, svc.ready)],
                 _if=started.did_change)


def ensure_running_packaged(name: str, triggers: list[OperationMeta], ready: str, timeout: int = 120) -> None:
    """A service that a Debian package installed: running, enabled, restarted when a trigger (our drop-in) will
    change. The package may have started it with its own settings before: it is restarted then."""
    started = systemd.service(name=f"Start and enable {name}, restart it when its settings change",
                              service=f"{name}.service", running=True, enabled=True,
                              restarted=any(t.will_change for t in triggers))
    server.shell(name=f"Wait for {name}", commands=[wait_command(name, timeout, ready)], _if=started.did_change)


def ensure_stopped(svc: Service) -> None:
    """Stop and disable the service (data stays)."""
    systemd.service(name=f"Stop and disable {svc.name}", service=f"{svc.name}.service", running=False, enabled=False)
