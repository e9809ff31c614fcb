"""Heal, don't restart the world: after any one service dies, `up` starts that service only, `restart --tenant`
restarts one tracking server, `status` says what is down and since when, and another tenant that keeps logging
meanwhile sees no error.

Services are killed the way a crash kills them: SIGKILL to the process group recorded in their pid file (never
a search by name). The other tenant logs through MLflow's own client in a process of its own (its login in its
environment), as a user's training script would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tracking_checks

pytestmark = [pytest.mark.services, pytest.mark.timeout(1500)]

# A training script of tenant globex: logs a metric about every 0.2 s until told to stop, counts what failed.
LOGGER = """
import json, os, sys, time
import mlflow
mlflow.set_tracking_uri(os.environ["URI"])
client = mlflow.MlflowClient()
run = client.create_run(client.create_experiment(f"steady-{os.getpid()}")).info.run_id
logged, errors, step = 0, [], 0
while not os.path.exists(os.environ["STOP"]):
    try:
        client.log_metric(run, "loss", 1.0 / (step + 1), step=step)
        logged += 1
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
    step += 1
    time.sleep(0.2)
json.dump({"logged": logged, "errors": errors}, open(os.environ["OUT"], "w"))
"""


def pids(stack) -> dict[str, int | None]:
    from flops_mlops.native.stack import Stack

    return {s.name: (proc.pid if (proc := s.process.recorded()) else None) for s in Stack(stack.load()).services()}


def crash(stack, service: str) -> None:
    from flops_mlops.processes import ManagedProcess

    proc = ManagedProcess(service, stack.load().state_dir).recorded()
    assert proc is not None, f"{service} is not running"
    os.killpg(proc.pid, signal.SIGKILL)  # the session's group: the service and its children
    proc.wait(timeout=30)


def status(stack) -> dict[str, dict]:
    report = json.loads(stack.cli("status", "--json", check=True).stdout)
    return {service["name"]: service for service in report["services"]}


@pytest.mark.parametrize("kind", ["local", "native"])
def test_one_dead_service_comes_back_alone_while_another_tenant_keeps_logging(make_stack, tmp_path, kind):
    stack = make_stack(kind, tenants=["acme", "globex"])
    stack.up()
    config = stack.load()
    globex = config.tenant("globex")
    stop, out = tmp_path / "stop", tmp_path / "logger.json"
    user, password = stack.admin("globex")
    # MLflow's own retry settings, as a user has them (the test session shortens them for itself).
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST_")}
    logger = subprocess.Popen([sys.executable, "-c", LOGGER], env={
        **env, "URI": config.tracking_uri(globex), "STOP": str(stop), "OUT": str(out),
        "MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password})
    try:
        victims = ["tracking-acme", "artifact-store"] + (["backend-store"] if kind == "native" else [])
        globex_pid = pids(stack)["tracking-globex"]
        for victim in victims:
            before = pids(stack)
            crash(stack, victim)
            seen = status(stack)
            assert seen[victim]["state"] == "down" and seen[victim]["since"], seen[victim]
            assert all(s["state"] == "running" for name, s in seen.items() if name != victim), seen
            text = stack.cli("status", check=True).stdout
            assert "DOWN: exited on its own; last sign of life" in text
            healed = stack.cli("up", "--detach", check=True)
            assert f"starting {victim}; leaving" in healed.stderr, healed.stderr
            after = pids(stack)
            assert after[victim] not in (None, before[victim])
            assert {k: v for k, v in after.items() if k != victim} == {k: v for k, v in before.items() if k != victim}
            # The healed tenant works end to end again: a model through the tracking server into the store.
            tracking_checks.log_example(config.tracking_uri(config.tenant("acme")), experiment=f"after-{victim}",
                                        login=stack.admin("acme"))
        # One tenant's server restarted on purpose: the other tenant's is not touched.
        before = pids(stack)
        restarted = stack.cli("restart", "--tenant", "acme", check=True)
        assert "tenant acme: tracking server restarted" in restarted.stdout
        after = pids(stack)
        assert after["tracking-acme"] != before["tracking-acme"]
        assert {k: v for k, v in after.items() if k != "tracking-acme"} == \
            {k: v for k, v in before.items() if k != "tracking-acme"}
        assert status(stack)["tracking-acme"]["state"] == "running"
        assert after["tracking-globex"] == globex_pid
    finally:
        stop.touch()
        logger.wait(timeout=300)
    result = json.loads(out.read_text())
    assert result["errors"] == [] and result["logged"] > 20, result


def test_status_tells_stopped_from_crashed_and_up_on_a_running_stack_changes_nothing(make_stack):
    stack = make_stack("local", tenants=["acme"])
    assert status(stack)["tracking-acme"]["state"] == "never started"
    stack.up()
    before = pids(stack)
    again = stack.cli("up", "--detach", check=True)
    assert "already running" in again.stderr and pids(stack) == before
    stack.down()
    seen = status(stack)
    assert {s["state"] for s in seen.values()} == {"stopped"} and all(s["since"] for s in seen.values())
    assert "stopped since" in stack.cli("status", check=True).stdout
    started = time.time()
    stack.up()
    assert status(stack)["tracking-acme"]["since"] >= started - 1


def test_restart_of_an_unknown_tenant_exits_2(make_stack):
    stack = make_stack("local", tenants=["acme"])
    result = stack.cli("restart", "--tenant", "nobody")
    assert result.returncode == 2 and "no tenant 'nobody'" in result.stderr
