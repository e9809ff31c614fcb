"""Run an FL project on this machine and supervise its processes, on either Flower API.

Every process runs on the project's environment (``environments``: this interpreter, or the virtualenv of the
repository's dependency set). Before anything starts, ``preflight`` checks the repository against the contract
in that environment, as learner 0 with its data (``contract``).

Legacy API (default): ``python -m flops_mlops.fl.aggregator`` and K ``python -m flops_mlops.fl.learner``
processes, configured by FLOPS_* variables (``settings.environment``; a free port for the aggregator). The
runner follows the aggregator's events. A learner that fails is reported by name with its error line (the
exception's last line) as it happens; the aggregator decides whether the rounds go on (FLOPS_MIN_LEARNERS). The
run fails when the aggregator does, or at the overall timeout, with what failed and the last lines of its log.
Learners get an environment without any MLflow or tracking setting, one thread each for the numeric libraries
(K learners share the machine's cores), and their own data folder (``data_dir``/learner-<i>) when given.

Hierarchical mode (``settings.hierarchical``, legacy API only): the aggregator is the root; per cluster a
``python -m flops_mlops.fl.cluster`` process (``cluster-<k>``, a client of the root and the aggregator of its own
learners, on a free port) and its learners, numbered across clusters. Cluster aggregators get the learners'
environment (no MLflow setting, no secret); one that fails is reported by name as learners are.

Deployment engine (``engine="deployment"``): a private SuperLink and K SuperNodes on free loopback ports, and
the ServerApp/ClientApp of ``flops_mlops.fl.engine`` submitted with ``flwr run``; the same supervision.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .events import EVENTS_VARIABLE, read_event
from .settings import FLSettings, environment
from .supervision import (
    QUIET_ENV,
    Child,
    FLRunError,
    Runtime,
    Supervisor,
    free_port,
    learner_environment,
    learner_settings,
)


class PreflightError(ValueError):
    """The repository breaks the contract; ``violations`` name file, class and method."""

    def __init__(self, violations: list[str]):
        super().__init__("the ML repository breaks FLOps' contract:\n  " + "\n  ".join(violations))
        self.violations = violations

def preflight(settings: FLSettings, runtime: Runtime, work_dir: Path, data_dir: Path | None) -> dict[str, Any]:
    """The contract check in the project's environment, as learner 0 with its own data; what it learnt (the
    flavour, the parameters, whether there is an input example), or PreflightError."""
    env = {**learner_environment({**os.environ, **QUIET_ENV, **runtime.variables}),
           **learner_settings(settings, 0, data_dir)}
    argv = [str(runtime.python), "-m", "flops_mlops.fl.contract", "--ml-repo", settings.ml_repo, "--json",
            *(["--flavor", settings.flavor] if settings.flavor else [])]
    work_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=settings.timeout, cwd=work_dir)
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise FLRunError(f"the contract check of {settings.ml_repo} failed (exit {done.returncode}):\n"
                         + "\n".join("    " + line for line in done.stderr.strip().splitlines()[-12:])) from None
    if result["violations"]:
        raise PreflightError(result["violations"])
    return result

def run_project(settings: FLSettings, work_dir: Path, on_event: Callable[[dict[str, Any]], None] | None = None,
                engine: str = "legacy", env: dict[str, str] | None = None, runtime: Runtime | None = None,
                data_dir: Path | None = None) -> dict[str, Any]:
    """Run the project; return the aggregator's summary or raise FLRunError.

    ``env``: extra environment for the aggregator only (its tracking login); learners never get it.
    ``on_event``: hears the aggregator's events (round, notice) and ``learner_failed`` events as they happen.
    """
    runtime = runtime or Runtime.here()
    if engine == "deployment":
        from .deployment import run_deployment

        return run_deployment(settings, work_dir, on_event, env, runtime, data_dir)
    settings = replace(settings, aggregator_address=f"127.0.0.1:{free_port()}")
    base = {**os.environ, **QUIET_ENV, **runtime.variables}
    supervisor = Supervisor(work_dir / "logs")
    events: list[dict[str, Any]] = []
    aggregator = supervisor.start("aggregator", [str(runtime.python), "-m", "flops_mlops.fl.aggregator"],
                                  {**base, **(env or {}), **environment(settings, "aggregator"),
                                   EVENTS_VARIABLE: "json"},
                                  stdout=subprocess.PIPE, cwd=work_dir)
    reader = threading.Thread(target=_read_events, args=(aggregator, events, on_event), daemon=True)
    reader.start()
    if settings.hierarchical:
        start_clusters(supervisor, settings, runtime, base, work_dir, data_dir)
    else:
        for index in range(settings.learners):
            start_learner(supervisor, settings, index, runtime, base, work_dir, data_dir)
    deadline = time.monotonic() + settings.timeout
    reported: set[str] = set()
    try:
        while True:
            for child in supervisor.learner_failures():
                if child.name not in reported and on_event is not None:
                    on_event({"event": "learner_failed", "learner": child.name, "code": child.process.returncode,
                              "message": child.error_line(),
                              "role": "cluster aggregator" if child.name.startswith("cluster-") else "learner"})
                reported.add(child.name)
            if aggregator.process.poll() not in (None, 0):
                reader.join(timeout=10)
                summary = next((e for e in events if e["event"] == "summary"), None)
                raise FLRunError(str(supervisor.failures_report()), summary)
            if aggregator.process.poll() == 0:
                reader.join(timeout=10)
                summary = next((e for e in events if e["event"] == "summary"), None)
                if summary is None:
                    raise supervisor.failure(aggregator, "aggregator exited without a summary")
                _wait_learners(supervisor, aggregator)
                return {**summary, "failed_learners": sorted(reported)}
            if time.monotonic() > deadline:
                raise FLRunError(f"the FL run did not finish within {settings.timeout:.0f} s; logs in "
                                 f"{supervisor.log_dir}")
            time.sleep(0.1)
    finally:
        supervisor.stop_all()


def start_learner(supervisor: Supervisor, settings: FLSettings, index: int, runtime: Runtime, base: dict[str, str],
                  work_dir: Path, data_dir: Path | None) -> None:
    """Learner ``index`` of ``settings.learners``, joining ``settings.aggregator_address``."""
    # each in a folder of its own: what a repository writes locally (checkpoints, a local MLflow store of its
    # own autologging) stays with that learner
    supervisor.start(f"learner-{index}", [str(runtime.python), "-m", "flops_mlops.fl.learner"], {
        **learner_environment(base), **learner_settings(settings, index, data_dir)},
        cwd=work_dir / "learners" / f"learner-{index}")


def start_clusters(supervisor: Supervisor, settings: FLSettings, runtime: Runtime, base: dict[str, str],
                   work_dir: Path, data_dir: Path | None) -> None:
    """Hierarchical mode: per cluster k a cluster aggregator ``cluster-<k>`` (a client of the root at
    ``settings.aggregator_address``, listening on a free port of its own) and its ``settings.learners`` learners.
    Learners are numbered across clusters (cluster k has learner-<k*N>..learner-<k*N+N-1>: their data split and
    data folders are those of a classic run with K*N learners). Cluster aggregators get what learners get: no
    MLflow setting, no secret."""
    per_cluster = settings.learners
    everyone = replace(settings, mode="classic", learners=settings.clusters * per_cluster)
    for cluster in range(settings.clusters):
        address = f"127.0.0.1:{free_port()}"
        cluster_settings = replace(settings, mode="classic", cluster_index=cluster, cluster_address=address)
        supervisor.start(f"cluster-{cluster}", [str(runtime.python), "-m", "flops_mlops.fl.cluster"],
                         {**learner_environment(base), **environment(cluster_settings, "cluster")},
                         cwd=work_dir / "clusters" / f"cluster-{cluster}")
        for index in range(cluster * per_cluster, (cluster + 1) * per_cluster):
            start_learner(supervisor, replace(everyone, aggregator_address=address), index, runtime, base,
                          work_dir, data_dir)


def _wait_learners(supervisor: Supervisor, aggregator: Child) -> None:
    """Give the learners a moment to end by themselves (the training is complete; stop_all ends the rest)."""
    deadline = time.monotonic() + 15
    for child in supervisor.children:
        if child is aggregator:
            continue
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass


def _read_events(child: Child, events: list[dict[str, Any]], on_event) -> None:
    with open(child.log_file, "ab") as log:
        for raw in child.process.stdout:
            line = raw.decode("utf-8", errors="replace")
            log.write(raw)
            log.flush()
            event = read_event(line)
            if event is None:
                continue
            events.append(event)
            if event["event"] in ("round", "notice") and on_event is not None:
                on_event(event)


def publish_kept(settings: FLSettings, work_dir: Path, env: dict[str, str], runtime: Runtime) -> dict[str, Any]:
    """Register the project's kept best model (``fl.publish``, as the aggregator: its environment and ``env``,
    its login); what it registered, or FLRunError with its error."""
    done = subprocess.run([str(runtime.python), "-m", "flops_mlops.fl.publish"],
                          env={**os.environ, **QUIET_ENV, **runtime.variables, **env,
                               **environment(settings, "aggregator")},
                          capture_output=True, text=True, timeout=settings.timeout, cwd=work_dir)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise FLRunError(f"publishing the kept model failed (exit {done.returncode}): "
                         + (lines[-1] if lines else "no error output"))
    return json.loads(done.stdout.strip().splitlines()[-1])
