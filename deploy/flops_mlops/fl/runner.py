"""Run an FL project on this machine and supervise its processes, on either Flower API.

Legacy API (default): ``python -m flops_mlops.fl.aggregator`` and K ``python -m flops_mlops.fl.learner``
processes, configured by FLOPS_* variables (``settings.environment``; a free port for the aggregator). The
runner follows the aggregator's progress events and ends the whole run as soon as any process fails, or at
the overall timeout, with an error saying which process failed and the last lines of its log. Learners get an
environment without any MLflow or tracking setting.

Deployment engine (``engine="deployment"``): a private SuperLink and K SuperNodes on free loopback ports, and
the ServerApp/ClientApp of ``flops_mlops.fl.engine`` submitted with ``flwr run``; the same supervision.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..processes import StackError, signal_group
from .events import EVENTS_VARIABLE, read_event
from .settings import (
    NO_TELEMETRY,
    FLSettings,
    environment,
)

QUIET_ENV = {**NO_TELEMETRY, "PYTHONUNBUFFERED": "1"}


class FLRunError(StackError):
    """The FL run failed: a process exited non-zero, or the timeout passed."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# What learners may inherit: the interpreter's and numeric libraries' settings, Flower's, and their own FLOPS_*
# settings. An allow-list, so that nothing pointing at MLflow or holding a password (an exported .env) reaches
# them.
LEARNER_VARIABLES = {"PATH", "HOME", "LANG", "TZ", "TMPDIR", "VIRTUAL_ENV", "DO_NOT_TRACK"}
LEARNER_PREFIXES = ("LC_", "PYTHON", "OPENBLAS_", "OMP_", "MKL_", "FLWR_", "GRPC_", "FLOPS_FAULT_")
LEARNER_SETTINGS = {f"FLOPS_{f.name.upper()}" for f in fields(FLSettings) if "learner" in f.metadata["roles"]}


def learner_environment(base: dict[str, str]) -> dict[str, str]:
    """The environment learners run in: nothing that points at MLflow or the tracking server, no secrets."""
    return {key: value for key, value in base.items()
            if key in LEARNER_VARIABLES or key in LEARNER_SETTINGS or key.startswith(LEARNER_PREFIXES)}


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log_file: Path

    def tail(self, lines: int = 12) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # Flower colours its log lines
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        last = text.rstrip().splitlines()[-lines:]
        return "\n".join("    " + line for line in dict.fromkeys([*errors[-2:], *last]))


@dataclass
class Supervisor:
    """Children of one FL run; stops all of them (by their own pids) on the first failure."""

    log_dir: Path
    children: list[Child] = field(default_factory=list)
    failures: list[Child] = field(default_factory=list)  # in the order they were seen

    def start(self, name: str, argv: list[str], env: dict[str, str], stdout=None) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.log_dir / f"{name}.log"
        log_file.write_bytes(b"")
        with open(log_file, "ab") as log:  # append mode: the event reader appends stdout to the same file
            process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                       stdout=stdout if stdout is not None else log,
                                       stderr=log, start_new_session=True)
        child = Child(name, process, log_file)
        self.children.append(child)
        return child

    def failed(self) -> Child | None:
        """The first child seen to exit non-zero (children that fail in the same poll: learners first)."""
        for child in sorted(self.children, key=lambda c: c.name == "aggregator"):
            if child not in self.failures and child.process.poll() not in (None, 0):
                self.failures.append(child)
        return self.failures[0] if self.failures else None

    def stop_all(self, grace: float = 5.0) -> None:
        for child in self.children:
            if child.process.poll() is None:
                signal_group(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.children:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                signal_group(child.process.pid, signal.SIGKILL)
                child.process.wait(timeout=5)

    def failure(self, child: Child, what: str) -> FLRunError:
        return FLRunError(f"{what}\n  log: {child.log_file}\n  last lines:\n{child.tail()}")

    def failures_report(self, grace: float = 1.0) -> FLRunError:
        """Every failed child, in the order seen, after ``grace`` seconds for the others to report theirs."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            self.failed()
            time.sleep(0.05)
        self.failed()
        headline = ", then ".join(f"{c.name} exited with code {c.process.returncode}" for c in self.failures)
        details = "\n".join(f"  {c.name} log: {c.log_file}\n  last lines:\n{c.tail(8)}" for c in self.failures)
        return FLRunError(f"{headline}\n{details}")


def run_project(settings: FLSettings, work_dir: Path, on_round: Callable[[dict[str, Any]], None] | None = None,
                engine: str = "legacy", env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the project; return the aggregator's summary or raise FLRunError.

    ``env``: extra environment for the aggregator only (its tracking login); learners never get it.
    """
    if engine == "deployment":
        return run_deployment(settings, work_dir, on_round, env)
    settings = replace(settings, aggregator_address=f"127.0.0.1:{free_port()}")
    base = {**os.environ, **QUIET_ENV}
    supervisor = Supervisor(work_dir / "logs")
    events: list[dict[str, Any]] = []
    aggregator = supervisor.start("aggregator", [sys.executable, "-m", "flops_mlops.fl.aggregator"],
                                  {**base, **(env or {}), **environment(settings, "aggregator"),
                                   EVENTS_VARIABLE: "json"},
                                  stdout=subprocess.PIPE)
    reader = threading.Thread(target=_read_events, args=(aggregator, events, on_round), daemon=True)
    reader.start()
    for index in range(settings.learners):
        supervisor.start(f"learner-{index}", [sys.executable, "-m", "flops_mlops.fl.learner"], {
            **learner_environment(base), **environment(replace(settings, learner_index=index), "learner")})
    deadline = time.monotonic() + settings.timeout
    try:
        while True:
            if supervisor.failed() is not None:
                raise supervisor.failures_report()
            if aggregator.process.poll() == 0:
                reader.join(timeout=10)
                summary = next((e for e in events if e["event"] == "summary"), None)
                if summary is None:
                    raise supervisor.failure(aggregator, "aggregator exited without a summary")
                _wait_learners(supervisor, aggregator)
                return summary
            if time.monotonic() > deadline:
                raise FLRunError(f"the FL run did not finish within {settings.timeout:.0f} s; logs in "
                                 f"{supervisor.log_dir}")
            time.sleep(0.1)
    finally:
        supervisor.stop_all()


def _wait_learners(supervisor: Supervisor, aggregator: Child) -> None:
    deadline = time.monotonic() + 15
    for child in supervisor.children:
        if child is aggregator:
            continue
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass  # stop_all ends it; the training itself is complete
        if child.process.returncode not in (None, 0):
            raise supervisor.failure(child, f"{child.name} exited with code {child.process.returncode}")


def _read_events(child: Child, events: list[dict[str, Any]], on_round) -> None:
    with open(child.log_file, "ab") as log:
        for raw in child.process.stdout:
            line = raw.decode("utf-8", errors="replace")
            log.write(raw)
            log.flush()
            event = read_event(line)
            if event is None:
                continue
            events.append(event)
            if event["event"] == "round" and on_round is not None:
                on_round(event)


# --- Flower's deployment engine ---------------------------------------------------------------------------


def run_deployment(settings: FLSettings, work_dir: Path, on_round: Callable[[dict[str, Any]], None] | None,
                   env: dict[str, str] | None = None) -> dict[str, Any]:
    """The same project on Flower's deployment engine: a private SuperLink (its own FLWR_HOME, whose config names
    an explicit connection, never the default simulation) and K SuperNodes on free loopback ports; the app of
    ``flops_mlops.fl.engine`` submitted with ``flwr run``; everything started is stopped again."""
    from .engine import write_app  # imports Flower's app API: only for this engine

    work_dir.mkdir(parents=True, exist_ok=True)
    home = work_dir / "flwr-home"
    home.mkdir(exist_ok=True)
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "flops"\n\n[superlink.flops]\naddress = "127.0.0.1:{port}"\ninsecure = true\n',
        encoding="utf-8")
    events_file = work_dir / "events.jsonl"
    events_file.write_text("", encoding="utf-8")
    run_config = {"project": settings.project, "tracking-uri": settings.tracking_uri,
                  "num-server-rounds": settings.rounds, "learners": settings.learners, "seed": settings.seed,
                  "better": settings.better, "alias": settings.alias, "model-dir": str(settings.model_dir),
                  "timeout": float(settings.timeout), "local-epochs": settings.local_epochs,
                  "learning-rate": float(settings.learning_rate), "events-file": str(events_file)}
    app = write_app(work_dir / "app", run_config)
    bin_dir = str(Path(sys.executable).parent)
    base = {**os.environ, **(env or {}), **QUIET_ENV, "FLWR_HOME": str(home),
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    supervisor = Supervisor(work_dir / "logs")
    superlink = supervisor.start("superlink", [f"{bin_dir}/flower-superlink", "--insecure", "--host", "127.0.0.1",
                                              "--port", str(port), "--disable-runtime-dependency-installation"],
                                 base)
    learner_env = learner_environment(base)
    for index in range(settings.learners):
        supervisor.start(f"supernode-{index}", [
            f"{bin_dir}/flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}",
            "--node-config", f"partition-id={index} num-partitions={settings.learners}",
            "--host", "127.0.0.1", "--port", str(free_port())], learner_env)
    deadline = time.monotonic() + settings.timeout
    seen = 0
    try:
        _wait_port(port, deadline, supervisor, superlink)
        submit = subprocess.run([f"{bin_dir}/flwr", "run", str(app), "flops", "--format", "json"], env=base,
                                capture_output=True, text=True, timeout=120, cwd=work_dir)
        if submit.returncode != 0:
            raise FLRunError(f"flwr run failed (exit {submit.returncode}): {submit.stdout[-800:]}"
                             f"{submit.stderr[-800:]}")
        run_id = json.loads(submit.stdout).get("run-id")
        while True:
            events = [event for line in events_file.read_text(encoding="utf-8").splitlines()
                      if (event := read_event(line)) is not None]
            for event in events[seen:]:
                if event["event"] == "round" and on_round is not None:
                    on_round(event)
            seen = len(events)
            for event in events:
                if event["event"] == "summary":
                    return {**event, "aggregator_address": f"127.0.0.1:{port}"}  # the SuperLink
                if event["event"] == "error":
                    raise supervisor.failure(superlink, f"the ServerApp of run {run_id} failed: {event['message']}")
            if supervisor.failed() is not None:
                raise supervisor.failures_report()
            status = _run_status(bin_dir, base, work_dir, run_id)
            if status and status.startswith("finished") and status != "finished:completed":
                raise supervisor.failure(superlink, f"run {run_id} ended as {status}")
            if time.monotonic() > deadline:
                raise FLRunError(f"the FL run did not finish within {settings.timeout:.0f} s; logs in "
                                 f"{supervisor.log_dir}")
            time.sleep(1)
    finally:
        _stop_with_descendants(supervisor)


def _wait_port(port: int, deadline: float, supervisor, superlink) -> None:

    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if superlink.process.poll() is not None:
                raise supervisor.failure(superlink, "the SuperLink exited") from None
            if time.monotonic() > deadline:
                raise FLRunError("the SuperLink did not start in time") from None
            time.sleep(0.5)


def _run_status(bin_dir: str, env: dict[str, str], cwd: Path, run_id: Any) -> str | None:
    """The run's status from `flwr ls` (``flwr run`` itself exits 0 even when the ServerApp crashed)."""
    done = subprocess.run([f"{bin_dir}/flwr", "ls", ".", "flops", "--format", "json"], env=env, capture_output=True,
                          text=True, timeout=60, cwd=cwd)
    try:
        runs = json.loads(done.stdout).get("runs", [])
    except ValueError:
        return None
    for run in runs:
        if str(run.get("run-id")) == str(run_id):
            return str(run.get("status"))
    return None


def _stop_with_descendants(supervisor) -> None:
    """Stop our children and the processes they started (SuperExec, ServerApp/ClientApp processes), by pid."""
    import psutil

    descendants = []
    for child in supervisor.children:
        try:
            descendants += psutil.Process(child.process.pid).children(recursive=True)
        except psutil.Error:
            pass
    supervisor.stop_all()
    for process in descendants:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(descendants, timeout=5)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
