"""An FL project on Flower's deployment engine on this machine: a private SuperLink and K SuperNodes on free
loopback ports, the ServerApp/ClientApp of ``flops_mlops.fl.engine`` submitted with ``flwr run``, supervised like
the legacy runner's processes (``supervision.Supervisor``) and stopped with everything they started."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .events import read_event
from .supervision import QUIET_ENV, FLRunError, Runtime, Supervisor, free_port, learner_environment
from .settings import FLSettings


def run_deployment(settings: FLSettings, work_dir: Path, on_event: Callable[[dict[str, Any]], None] | None,
                   env: dict[str, str] | None, runtime: Runtime, data_dir: Path | None) -> dict[str, Any]:
    """The same project on Flower's deployment engine: a private SuperLink (its own FLWR_HOME, whose config names
    an explicit connection, never the default simulation) and K SuperNodes on free loopback ports; the app of
    ``flops_mlops.fl.engine`` submitted with ``flwr run``; everything started is stopped again."""
    from .engine import run_config, write_app  # imports Flower's app API: only for this engine

    work_dir.mkdir(parents=True, exist_ok=True)
    home = work_dir / "flwr-home"
    home.mkdir(exist_ok=True)
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "flops"\n\n[superlink.flops]\naddress = "127.0.0.1:{port}"\ninsecure = true\n',
        encoding="utf-8")
    events_file = work_dir / "events.jsonl"
    events_file.write_text("", encoding="utf-8")
    app = write_app(work_dir / "app", {**run_config(settings), "events-file": str(events_file)})
    bin_dir = str(runtime.bin_dir)
    base = {**os.environ, **(env or {}), **QUIET_ENV, **runtime.variables, "FLWR_HOME": str(home),
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    supervisor = Supervisor(work_dir / "logs")
    superlink = supervisor.start("superlink", [f"{bin_dir}/flower-superlink", "--insecure", "--host", "127.0.0.1",
                                              "--port", str(port), "--disable-runtime-dependency-installation"],
                                 base)
    learner_env = learner_environment(base)
    for index in range(settings.learners):
        supervisor.start(f"supernode-{index}", [
            f"{bin_dir}/flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}",
            "--node-config", f"partition-id={index} num-partitions={settings.learners}"
            + (f' data-dir="{data_dir / f"learner-{index}"}"' if data_dir else ""),
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
                if event["event"] in ("round", "notice") and on_event is not None:
                    on_event(event)
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
