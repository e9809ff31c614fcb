"""Adapter to Flower's deployment engine: a ServerApp and a ClientApp run by ``flower-superlink``,
``flower-supernode`` and ``flwr run`` (the supported path; slower: a process per message, 3-s polling).

The ServerApp drives the rounds itself with the Message API (train, then evaluate, on every node), through
the same ``aggregator.Rounds`` bookkeeping and tracking policy as the legacy adapter. Its settings arrive as
the run config (``flwr run --run-config``); learners take ``partition-id``/``num-partitions`` from their
SuperNode's node config. Progress events are appended to the file named by ``events-file``, which the runner
follows. ``write_app`` writes the Flower app project that names these components; the runner
(``runner.run_deployment``) starts the SuperLink and SuperNodes and submits it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from .events import Events, NotEnoughLearners
from .settings import FLSettings, environment

server_app = ServerApp()
client_app = ClientApp()

# run-config key -> FLSettings field (the FAB's pyproject declares every key with a default)
RUN_CONFIG = {"project": "project", "tracking-uri": "tracking_uri", "num-server-rounds": "rounds",
              "learners": "learners", "min-learners": "min_learners", "seed": "seed", "better": "better",
              "alias": "alias", "model-dir": "model_dir", "timeout": "timeout", "round-timeout": "round_timeout",
              "ml-repo": "ml_repo", "flavor": "flavor", "ml-repo-tag": "ml_repo_tag"}


def run_config(settings: FLSettings) -> dict[str, Any]:
    """The run config that carries ``settings`` to the ServerApp (and the repository to the ClientApps)."""
    return {key: (str(getattr(settings, field)) if isinstance(getattr(settings, field), Path)
                  else getattr(settings, field)) for key, field in RUN_CONFIG.items()}


def _settings(run_config: dict[str, Any]) -> FLSettings:
    values = {field: run_config[key] for key, field in RUN_CONFIG.items() if key in run_config}
    values["model_dir"] = Path(str(values.get("model_dir", "flops-model")))
    for key in ("timeout", "round_timeout"):
        if key in values:
            values[key] = float(values[key])
    return FLSettings(**values)


@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    from . import aggregator

    settings = _settings(dict(context.run_config)).check("aggregator")
    events = Events(file=str(context.run_config.get("events-file", "")) or None)
    aggregator.quiet_network_defaults()
    model = aggregator.ModelLogging.load(settings)
    tracker = aggregator.make_tracker(settings, model)
    try:
        tracker.open()
        rounds = aggregator.Rounds(settings, tracker, events)
        nodes = _wait_for_nodes(grid, settings)
        params = model.model.parameters()
        for server_round in range(1, settings.rounds + 1):
            rounds.begin(server_round)
            config = ConfigRecord(rounds.fit_config(server_round))
            replies = _ask(grid, nodes, "train", server_round, params, config, settings.round_timeout)
            params = rounds.trained(server_round, [
                (int(r.content["metrics"]["num-examples"]), r.content["arrays"].to_numpy_ndarrays())
                for r in replies])
            replies = _ask(grid, nodes, "evaluate", server_round, params, config, settings.round_timeout)
            rounds.evaluated(server_round, [
                (int(r.content["metrics"]["num-examples"]), float(r.content["metrics"]["loss"]),
                 float(r.content["metrics"]["accuracy"])) for r in replies])
            nodes = [r.metadata.src_node_id for r in replies]  # who failed has left
        aggregator.finish(settings, tracker, events)
    except Exception as exc:
        tracker.fail()
        if isinstance(exc, NotEnoughLearners) and tracker.best.result is not None:
            aggregator.finish(settings, tracker, events)  # the best model so far is registered all the same
        events.emit("error", message=f"{type(exc).__name__}: {exc}")
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
    """Send ``kind`` to every node; the replies without error (the Rounds decide whether they are enough)."""
    messages = [Message(RecordDict({"arrays": ArrayRecord(numpy_ndarrays=list(params)), "config": config}),
                        dst_node_id=node, message_type=kind, group_id=str(server_round)) for node in nodes]
    return [r for r in grid.send_and_receive(messages, timeout=timeout) if not r.has_error()]


def _learner(context: Context):
    import os

    from .learner import LocalLearner
    from .ml_repo import repository_folder

    node = context.node_config
    settings = FLSettings(learners=int(node["num-partitions"]), learner_index=int(node["partition-id"]),
                          seed=int(context.run_config.get("seed", 42)), data_dir=str(node.get("data-dir", "")),
                          ml_repo=str(context.run_config.get("ml-repo", "")),
                          round_timeout=float(context.run_config.get("round-timeout", 300))).check("learner")
    os.environ.update(environment(settings, "learner"))  # what the repository reads
    return LocalLearner(settings, repository_folder(settings.ml_repo))


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    learner = _learner(context)
    arrays, n = learner.fit(msg.content["arrays"].to_numpy_ndarrays(), dict(msg.content["config"]))
    return Message(RecordDict({"arrays": ArrayRecord(numpy_ndarrays=arrays),
                               "metrics": MetricRecord({"num-examples": n})}), reply_to=msg)


@client_app.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    config = dict(msg.content["config"])
    loss, n, accuracy = _learner(context).evaluate(msg.content["arrays"].to_numpy_ndarrays(),
                                                   int(config.get("server_round", 0)))
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
