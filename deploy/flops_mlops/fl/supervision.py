"""The processes of an FL run on this machine: where they run (``Runtime``: the project environment's Python), what
learners may inherit (an allow-list: no MLflow setting, no secret), and their supervision (``Supervisor``: logs,
failures in the order seen, stopping by their own pids). Shared by the legacy runner and the deployment engine's."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..processes import StackError, signal_group
from .settings import NO_TELEMETRY, FLSettings, environment

QUIET_ENV = {**NO_TELEMETRY, "PYTHONUNBUFFERED": "1"}


class FLRunError(StackError):
    """The FL run failed: a process exited non-zero, or the timeout passed. ``summary``: what the aggregator
    registered before it gave up (the best model so far), if anything."""

    def __init__(self, message: str, summary: dict[str, Any] | None = None):
        super().__init__(message)
        self.summary = summary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# What learners may inherit: the interpreter's and numeric libraries' settings, Flower's, and their own FLOPS_*
# settings. An allow-list, so that nothing pointing at MLflow or holding a password (an exported .env) reaches
# them.
LEARNER_VARIABLES = {"PATH", "HOME", "LANG", "TZ", "TMPDIR", "VIRTUAL_ENV", "DO_NOT_TRACK"}
LEARNER_PREFIXES = ("LC_", "PYTHON", "OPENBLAS_", "OMP_", "MKL_", "FLWR_", "GRPC_", "FLOPS_FAULT_", "KERAS_", "JAX_",
                    "XLA_", "HF_")
# K learners on a machine's few cores: one thread each, or they slow each other down many times over (an
# explicit setting wins).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
LEARNER_SETTINGS = {f"FLOPS_{f.name.upper()}" for f in fields(FLSettings) if "learner" in f.metadata["roles"]}


def learner_environment(base: dict[str, str]) -> dict[str, str]:
    """The environment learners run in: nothing that points at MLflow or the tracking server, no secrets."""
    return {**ONE_THREAD, **{key: value for key, value in base.items()
                             if key in LEARNER_VARIABLES or key in LEARNER_SETTINGS or key.startswith(LEARNER_PREFIXES)}}


def learner_settings(settings: FLSettings, index: int, data_dir: Path | None) -> dict[str, str]:
    """Learner ``index``'s FLOPS_* variables, its own data folder (``data_dir``/learner-<index>) included."""
    return environment(replace(settings, learner_index=index,
                               data_dir=str(data_dir / f"learner-{index}") if data_dir else ""), "learner")


@dataclass(frozen=True)
class Runtime:
    """Where a project's processes run: the environment's Python, and the variables it needs."""

    python: Path
    variables: dict[str, str]

    @classmethod
    def here(cls) -> Runtime:
        return cls(Path(sys.executable), {})

    @property
    def bin_dir(self) -> Path:
        return self.python.parent


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log_file: Path

    def error_line(self) -> str:
        """The last ``error:`` line of the log (a learner's one-line report), else its last line."""
        try:
            text = re.sub(r"\x1b\[[0-9;]*m", "", self.log_file.read_text(encoding="utf-8", errors="replace"))
        except FileNotFoundError:
            return "(no log)"
        lines = text.rstrip().splitlines() or ["(empty log)"]
        return next((line.removeprefix("error: ") for line in reversed(lines) if line.startswith("error:")),
                    lines[-1])

    def tail(self, lines: int = 12) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # Flower colours its log lines
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        last = [line for line in text.rstrip().splitlines() if not line.startswith("FLOPS_EVENT ")][-lines:]
        return "\n".join("    " + line for line in dict.fromkeys([*errors[-2:], *last]))


@dataclass
class Supervisor:
    """Children of one FL run; stops all of them (by their own pids) on the first failure."""

    log_dir: Path
    children: list[Child] = field(default_factory=list)
    failures: list[Child] = field(default_factory=list)  # in the order they were seen

    def start(self, name: str, argv: list[str], env: dict[str, str], stdout=None, cwd: Path | None = None) -> Child:
        """Start ``argv`` as ``name``, logging to log_dir/<name>.log, in ``cwd`` (created; default: here)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if cwd is not None:
            cwd.mkdir(parents=True, exist_ok=True)
        log_file = self.log_dir / f"{name}.log"
        log_file.write_bytes(b"")
        with open(log_file, "ab") as log:  # append mode: the event reader appends stdout to the same file
            process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, cwd=cwd,
                                       stdout=stdout if stdout is not None else log,
                                       stderr=log, start_new_session=True)
        child = Child(name, process, log_file)
        self.children.append(child)
        return child

    def learner_failures(self) -> list[Child]:
        """Learners that exited non-zero so far."""
        return [c for c in self.children if c.name != "aggregator" and c.process.poll() not in (None, 0)]

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
