"""compose's fl profile in FLOps' hierarchical mode, for real: a compose project rendered from configs/compose.yaml
with compose.fl set to a root over 2 cluster aggregators x 2 learners, 2 cycles x 2 rounds (the keys an Oakestra
project has), run in containers. Needs what tests/compose/test_compose.py needs (see there)."""

from __future__ import annotations

import re
import subprocess

import pytest
from compose_stack import QUIET, start_stack

HIERARCHY = {"mode": "hierarchical", "clusters": ["factory", "district"], "learners": 2, "cycles": 2, "rounds": 2}
HIERARCHICAL_FL_SERVICES = ("fl-aggregator", "fl-cluster-0", "fl-cluster-1", *(f"fl-learner-{i}" for i in range(4)))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The compose project of configs/compose.yaml with HIERARCHY as compose.fl, one tenant."""
    yield from start_stack(tmp_path_factory, fl=HIERARCHY)


def test_fl_profile_runs_the_project_in_hierarchical_mode(stack, monkeypatch):
    """fl-aggregator as the root over two cluster aggregators with two learners each, all in containers, the shape
    and the cycles from compose.fl; only the root logs (one run per cycle, per-cluster aggregates) and the best
    cycle's model is the champion."""
    import mlflow

    for key, value in QUIET.items():
        monkeypatch.setenv(key, value)
    project, cycles = "ComposeTiers", HIERARCHY["cycles"]
    fl_env = {"FLOPS_FL_PROJECT": project}  # cycles and rounds: compose.fl's
    stack.compose("up", "--detach", "--wait", "--pull", "never", "--no-build", "tracking-server", extra_env=fl_env)
    ran = stack.compose("run", "--rm", "--use-aliases", "--pull", "never", "fl-aggregator", extra_env=fl_env)
    others = HIERARCHICAL_FL_SERVICES[1:]
    exits = {service: subprocess.run(["docker", "wait", stack.compose("--profile", "fl", "ps", "--all", "--quiet",
                                                                      service, extra_env=fl_env).stdout.strip()],
                                     capture_output=True, text=True, timeout=300).stdout.strip()
             for service in others}
    logs = ran.stdout + ran.stderr + stack.compose("--profile", "fl", "logs", "--no-color", *others,
                                                   extra_env=fl_env).stdout
    assert exits == {service: "0" for service in others}, logs[-6000:]
    assert f"summary of {project} " in ran.stdout and f"cycle {cycles}/{cycles}" in ran.stdout, logs[-6000:]
    assert "cluster-1: cycle 2: 2 rounds with 2 learners" in logs
    assert not [key for key, value in stack.secrets.items() if value and value in logs]
    best = int(re.search(r"^best cycle: +(\d+)$", ran.stdout, re.MULTILINE).group(1))

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", stack.admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack.admin[1])
    mlflow.set_tracking_uri(stack.tracking_uri)
    experiment = mlflow.get_experiment_by_name(project)
    runs = {r.info.run_name: r for r in mlflow.search_runs(experiment_ids=[experiment.experiment_id],
                                                           output_format="list")}
    assert sorted(runs) == [f"cycle-{c}" for c in range(1, cycles + 1)]
    for run in runs.values():
        assert {"loss", "accuracy", "cluster-0/loss", "cluster-1/accuracy", "cluster-1/examples"} <= set(
            run.data.metrics)
        assert run.data.params["mode"] == "hierarchical" and run.info.status == "FINISHED"
    version = mlflow.MlflowClient().get_model_version_by_alias(project, "champion")
    assert version.run_id == runs[f"cycle-{best}"].info.run_id
