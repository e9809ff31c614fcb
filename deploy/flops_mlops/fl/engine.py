"""Adapter to Flower's deployment engine: a ServerApp and a ClientApp run by ``flower-superlink``,
``flower-supernode`` and ``flwr run`` (the supported path; slower: a process per message, 3-s polling).

The ServerApp drives the rounds itself with the Message API (train, then evaluate, on every node), through
the same ``aggregator.Rounds`` bookkeeping and tracking policy as the legacy adapter. Its settings arrive as
the run config (``flwr run --run-config``); learners take ``partition-id``/``num-partitions`` from their
SuperNode's node config. Progress events are appended to the file named by ``events-file``, which the runner
follows. ``run_deployment`` starts a private SuperLink and K SuperNodes on 127.0.0.1 (free ports, a private
FLWR_HOME whose config names an explicit connection, never the default "local" simulation), submits the
app, and stops everything it started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from .settings import EVENT_PREFIX, FLSettings

server_app = ServerApp()
client_app = ClientApp()

# run-config key -> FLSettings field (the FAB's pyproject declares every key with a default)
RUN_CONFIG = {"project": "project", "tracking-uri": "tracking_uri", "num-server-rounds": "rounds",
              "learners": "learners", "seed": "seed", "better": "better", "alias": "alias",
              "model-dir": "model_dir", "timeout": "timeout", "local-epochs": "local_epochs",
              "learning-rate": "learning_rate"}


def _settings(run_config: dict[str, Any]) -> FLSettings:
    values = {field: run_config[key] for key, field in RUN_CONFIG.items() if key in run_config}
    values["model_dir"] = Path(str(values.get("model_dir", "flops-model")))
    values["timeout"] = float(values.get("timeout", 600))
    values["learning_rate"] = float(values.get("learning_rate", 0.3))
    return FLSettings(**values)


@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    from . import aggregator, model

    settings = _settings(dict(context.run_config)).check("aggregator")
    events = str(context.run_config.get("events-file", ""))
    if events:
        aggregator.EVENT_FILE.append(events)
    aggregator.quiet_network_defaults()
    tracker = aggregator.make_tracker(settings)
    try:
        tracker.open()
        rounds = aggregator.Rounds(settings, tracker)
        nodes = _wait_for_nodes(grid, settings)
        params = model.initial_parameters()
        for server_round in range(1, settings.rounds + 1):
            rounds.begin(server_round)
            config = ConfigRecord(rounds.fit_config(server_round))
            replies = _ask(grid, nodes, "train", server_round, params, config, settings.timeout)
            params = rounds.trained(server_round, [
                (int(r.content["metrics"]["num-examples"]), r.content["arrays"].to_numpy_ndarrays())
                for r in replies])
            replies = _ask(grid, nodes, "evaluate", server_round, params, config, settings.timeout)
            rounds.evaluated(server_round, [
                (int(r.content["metrics"]["num-examples"]), float(r.content["metrics"]["loss"]),
                 float(r.content["metrics"]["accuracy"])) for r in replies])
        aggregator.finish(settings, tracker)
    except Exception as exc:
        tracker.fail()
        aggregator.emit("error", message=f"{type(exc).__name__}: {exc}")
        raise


def _wait_for_nodes(grid: Grid, settings: FLSettings) -> list[int]:
    deadline = time.monotonic() + settings.timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= settings.learners:
            return nodes[: settings.learners]
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {settings.learners} learners connected")
        time.sleep(1)


def _ask(grid: Grid, nodes: list[int], kind: str, server_round: int, params, config: ConfigRecord,
         timeout: float) -> list[Message]:
    messages = [Message(RecordDict({"arrays": ArrayRecord(numpy_ndarrays=list(params)), "config": config}),
                        dst_node_id=node, message_type=kind, group_id=str(server_round)) for node in nodes]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    failed = [r for r in replies if r.has_error()]
    if failed or len(replies) < len(nodes):
        detail = failed[0].error.reason if failed else "no reply before the timeout"
        raise RuntimeError(f"round {server_round}: {len(failed) or len(nodes) - len(replies)} learner(s) failed "
                           f"to {kind} ({detail})")
    return replies


def _learner(context: Context):
    from .learner import LocalLearner

    node = context.node_config
    settings = FLSettings(learners=int(node["num-partitions"]), learner_index=int(node["partition-id"]),
                          seed=int(context.run_config.get("seed", 42))).check("learner")
    return LocalLearner(settings)


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    learner = _learner(context)
    arrays, n = learner.fit(msg.content["arrays"].to_numpy_ndarrays(), dict(msg.content["config"]))
    return Message(RecordDict({"arrays": ArrayRecord(numpy_ndarrays=arrays),
                               "metrics": MetricRecord({"num-examples": n})}), reply_to=msg)


@client_app.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    loss, n, accuracy = _learner(context).evaluate(msg.content["arrays"].to_numpy_ndarrays())
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": n, "loss": loss, "accuracy": accuracy})}),
                   reply_to=msg)


# --- running it on this machine ---------------------------------------------------------------------------

APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "flopsfl"
version = "1.0.0"
description = "FLOps FL project (components live in the installed flops_mlops package)"
license = "Apache-2.0"
dependencies = ["flwr==1.42.0"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "flops"

[tool.flwr.app.components]
serverapp = "flops_mlops.fl.engine:server_app"
clientapp = "flops_mlops.fl.engine:client_app"

[tool.flwr.app.config]
{config}
"""


def _toml_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


def write_app(folder: Path, run_config: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = "\n".join(f"{key} = {_toml_value(value)}" for key, value in run_config.items())
    (folder / "pyproject.toml").write_text(APP_PYPROJECT.format(config=lines), encoding="utf-8")
    (folder / "flops_app.py").write_text('"""Components: flops_mlops.fl.engine."""\n', encoding="utf-8")
    return folder


def run_deployment(settings: FLSettings, work_dir: Path, on_round: Callable[[dict[str, Any]], None] | None,
                   env: dict[str, str] | None = None) -> dict[str, Any]:
    from .runner import QUIET_ENV, FLRunError, Supervisor, free_port, learner_environment

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
            events = [json.loads(line.removeprefix(EVENT_PREFIX))
                      for line in events_file.read_text(encoding="utf-8").splitlines() if line.strip()]
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
    import socket

    from .runner import FLRunError

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
