"""Long-running services: systemd units on real hosts, start-stop-daemon with pid files where there is no systemd.

The unit file is rendered on every host: systemd runs it, and where there is no systemd it is kept under the
deployment's etc folder, start-stop-daemon starts the same command line, and a changed unit (or any other
changed trigger, such as a configuration file) restarts the service. A service is started only when it is
not running, so a second apply changes nothing.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from pyinfra import host
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.server import Command
from pyinfra.operations import files, server, systemd

from .settings import TEMPLATES, TRIM, HostSettings


@dataclass(frozen=True)
class Service:
    name: str                     # unit name without .service; also names the pid and log files
    description: str
    argv: list[str]               # argv[0] is an absolute path: start-stop-daemon --exec matches it
    ready: str                    # shell test that succeeds once the service answers
    timeout: int = 60             # seconds to wait for ``ready``
    env_file: str | None = None   # KEY='value' lines, read by systemd and by sh alike
    workdir: str | None = None
    user: str = "root"            # the account it runs as; its log file is opened by root, mode 0600
    before_start: list[list[str]] = field(default_factory=list)  # run (environment, workdir, user) before each start


def unit_path(s: HostSettings, svc: Service) -> str:
    if s.systemd:
        return f"/etc/systemd/system/{svc.name}.service"
    return f"{s.etc}/units/{svc.name}.service"


def pid_file(s: HostSettings, svc: Service) -> str:
    return f"{s.run}/{svc.name}.pid"


def log_file(s: HostSettings, svc: Service) -> str:
    return f"{s.logs}/{svc.name}.log"


def _q(value: str) -> str:
    return shlex.quote(value)


def _alive_check(s: HostSettings, svc: Service) -> str:
    if s.systemd:
        return f"systemctl is-active --quiet {_q(svc.name)}"
    return f"start-stop-daemon --status --pidfile {_q(pid_file(s, svc))} --exec {_q(svc.argv[0])}"


def is_running(s: HostSettings, svc: Service) -> bool:
    """Checked on the host when the operation runs (not when the deploy is planned)."""
    return host.get_fact(Command, f"if {_alive_check(s, svc)}; then echo running; else echo stopped; fi") == "running"


def wait_command(name: str, ready: str, alive: str, where: str, timeout: int) -> str:
    """Poll ``ready`` once a second; fail early if the service died, naming where its log is."""
    return (f"i=0; until {ready}; do "
            f"if ! {alive}; then echo {_q(f'{name} stopped while starting; see {where}')} >&2; exit 1; fi; "
            f"i=$((i+1)); if [ $i -ge {timeout} ]; then "
            f"echo {_q(f'{name} not ready after {timeout} s; see {where}')} >&2; exit 1; fi; "
            "sleep 1; done")


def _wait(s: HostSettings, svc: Service) -> str:
    where = f"journalctl -u {svc.name}" if s.systemd else log_file(s, svc)
    return wait_command(svc.name, svc.ready, _alive_check(s, svc), where, svc.timeout)


def start_command(s: HostSettings, svc: Service) -> str:
    """The environment file is read as root; ``before_start`` and the service run as ``svc.user`` (as with
    systemd's User=, which applies to ExecStartPre too)."""
    steps = []
    if svc.env_file:
        steps.append(f"set -a && . {_q(svc.env_file)} && set +a")
    if svc.workdir:
        steps.append(f"cd {_q(svc.workdir)}")
    as_user = ["runuser", "-m", "-u", svc.user, "--"] if svc.user != "root" else []
    steps.extend(shlex.join([*as_user, *argv]) for argv in svc.before_start)
    daemon = ["start-stop-daemon", "--start", "--background", "--make-pidfile", "--pidfile", pid_file(s, svc),
              "--output", log_file(s, svc)]
    if svc.workdir:
        daemon += ["--chdir", svc.workdir]
    if svc.user != "root":
        daemon += ["--chuid", svc.user]
    daemon += ["--exec", svc.argv[0], "--", *svc.argv[1:]]
    steps.append(shlex.join(daemon))
    return "(" + " && ".join(steps) + ")"


def stop_command(s: HostSettings, svc: Service) -> str:
    """Stop by the recorded pid only (never by name): TERM to its process group, KILL after 30 s.

    start-stop-daemon --background puts the daemon in a session of its own; its process group holds the
    daemon and its children (MLflow's uvicorn workers), and never the shell running this command.
    """
    pidfile = _q(pid_file(s, svc))
    alive = "[ -e /proc/$pid ] && ! grep -q '^State:[[:space:]]*Z' /proc/$pid/status 2>/dev/null"
    return (f"if {_alive_check(s, svc)}; then pid=$(cat {pidfile}); "
            "group=$(ps -o pgid= -p $pid | tr -d ' '); own=$(ps -o pgid= -p $$ | tr -d ' '); "
            "if [ -z \"$group\" ] || [ \"$group\" -le 1 ] || [ \"$group\" = \"$own\" ]; then group=$pid; fi; "
            "kill -s TERM -- -$group; i=0; "
            f"while {alive}; do i=$((i+1)); if [ $i -ge 60 ]; then kill -s KILL -- -$group; sleep 1; break; fi; "
            "sleep 0.5; done; "
            f"if {alive}; then echo {_q(f'{svc.name} (pid file {pid_file(s, svc)}) did not stop')} >&2; exit 1; fi; "
            f"fi; rm -f {pidfile}")


UNIT_TEMPLATE = TEMPLATES / "unit.service.j2"


def unit_data(svc: Service) -> dict:
    """What unit.service.j2 is rendered with."""
    return {"description": svc.description, "exec_start": shlex.join(svc.argv),
            "exec_start_pre": [shlex.join(argv) for argv in svc.before_start],
            "env_file": svc.env_file, "workdir": svc.workdir, "run_as": svc.user}


def ensure_running(s: HostSettings, svc: Service, triggers: list[OperationMeta]) -> None:
    """Render the unit, start the service if it is not running, restart it if a trigger changed."""
    unit = files.template(name=f"Render unit {svc.name}", src=str(UNIT_TEMPLATE), dest=unit_path(s, svc),
                          mode="644", jinja_env_kwargs=dict(TRIM), **unit_data(svc))
    if not s.systemd:  # start-stop-daemon appends to it as root; logs may quote what a service saw
        files.file(name=f"Log file of {svc.name} (mode 0600)", path=log_file(s, svc), user="root", group="root",
                   mode="600")

    def changed() -> bool:
        return unit.did_change() or any(t.did_change() for t in triggers)

    if s.systemd:
        systemd.daemon_reload(name=f"Reload systemd for {svc.name}", _if=unit.did_change)
        started = systemd.service(name=f"Start and enable {svc.name}", service=f"{svc.name}.service",
                                  running=True, enabled=True)
        restarted = systemd.service(name=f"Restart {svc.name} (its configuration changed)",
                                    service=f"{svc.name}.service", restarted=True,
                                    _if=lambda: changed() and not started.did_change())
        server.shell(name=f"Wait for {svc.name}", commands=[_wait(s, svc)],
                     _if=lambda: started.did_change() or restarted.did_change())
        return

    server.shell(name=f"Stop {svc.name} (its configuration changed)", commands=[stop_command(s, svc)],
                 _if=lambda: changed() and is_running(s, svc))
    server.shell(name=f"Start {svc.name}", commands=[start_command(s, svc), _wait(s, svc)],
                 _if=lambda: not is_running(s, svc))


def ensure_running_packaged(name: str, triggers: list[OperationMeta], ready: str, timeout: int = 120) -> None:
    """A service that a Debian package installed (systemd hosts): running, enabled, restarted on change."""
    started = systemd.service(name=f"Start and enable {name}", service=f"{name}.service", running=True, enabled=True)
    restarted = systemd.service(
        name=f"Restart {name} (its configuration changed)", service=f"{name}.service", restarted=True,
        _if=lambda: any(t.did_change() for t in triggers) and not started.did_change())
    alive = f"systemctl is-active --quiet {_q(name)}"
    server.shell(name=f"Wait for {name}", commands=[wait_command(name, ready, alive, f"journalctl -u {name}", timeout)],
                 _if=lambda: started.did_change() or restarted.did_change())


def ensure_stopped(s: HostSettings, svc: Service) -> None:
    """Stop the service (data stays); with systemd also disable it."""
    if s.systemd:
        systemd.service(name=f"Stop and disable {svc.name}", service=f"{svc.name}.service",
                        running=False, enabled=False)
        return
    server.shell(name=f"Stop {svc.name}", commands=[stop_command(s, svc)], _if=lambda: is_running(s, svc))
