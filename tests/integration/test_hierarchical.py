"""Hierarchical FL end to end: `flops-mlops round --mode hierarchical` with real Flower processes (a root aggregator,
cluster aggregators, learners) and the scikit-learn example against a real local stack (SQLite + embedded FTP).

Faults are injected with the test-only FLOPS_FAULT_* variables (flops_mlops.fl.faults); cluster aggregators and
learners are audited with test_fl_round's hook (what MLflow settings they got, whom they connect to, whether they
import mlflow).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import conftest
import pytest
from test_fl_round import (  # noqa: F401 - local: the module's stack, a fixture of its own in this module too
    AUDIT_HOOK,
    ROUND_METRICS,
    champion_accuracy,
    local,
    model_dir,
    round_cli,
    tracking_uri,
)

pytestmark = pytest.mark.timeout(900)

HIERARCHY = ("--mode", "hierarchical", "--clusters", "2", "--learners-per-cluster", "2")
CLUSTER_METRICS = {f"cluster-{k}/{name}" for k in (0, 1) for name in ("loss", "accuracy", "examples",
                                                                       "eval_examples")}


def runs_by_cycle(stack, project: str) -> dict[int, object]:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(stack))
    runs = mlflow.search_runs(experiment_names=[project], output_format="list")
    return {int(run.data.tags["flops.round"]): run for run in runs}


def listening_addresses(stack, project: str) -> dict[str, tuple[str, int]]:
    """Where each cluster aggregator listened for its learners, from its log's first line."""
    found = {}
    for log in (stack.load().state_dir / "fl" / "acme" / project / "logs").glob("cluster-*.log"):
        match = re.search(r"^(cluster-\d+): listening on ([0-9.]+):(\d+) ", log.read_text(), re.MULTILINE)
        found[match[1]] = (match[2], int(match[3]))
    return found


@pytest.fixture(scope="module")
def hierarchical_run(local, tmp_path_factory):
    """2 clusters x 2 learners, 2 cycles x 2 rounds; cycle 2's global model is corrupted (so cycle 1 is the best);
    cluster aggregators and learners audited, with the tracking server's address in the environment they come
    from."""
    hooks = tmp_path_factory.mktemp("audit-hook")
    (hooks / "sitecustomize.py").write_text(AUDIT_HOOK, encoding="utf-8")
    audit = hooks / "audit"
    audit.mkdir()
    done = round_cli(local, "--project", "Tiers", *HIERARCHY, "--cycles", "2", "--rounds", "2", "--json", env={
        "FLOPS_FAULT_CORRUPT_ROUND": "2", "PYTHONPATH": str(hooks), "MLFLOW_TRACKING_URI": tracking_uri(local),
        "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": local.admin()[1]})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FL project Tiers for tenant acme: hierarchical, 2 cycles over 2 cluster aggregators" in done.stderr
    assert "cycle 2/2" in done.stderr  # progress goes to stderr with --json
    return json.loads(done.stdout), audit


def test_the_root_logs_one_run_per_cycle_with_per_cluster_aggregates(local, hierarchical_run):
    import mlflow

    summary, _ = hierarchical_run
    assert summary["mode"] == "hierarchical" and summary["unit"] == "cycle"
    by_cycle = runs_by_cycle(local, "Tiers")
    assert sorted(by_cycle) == [1, 2]
    assert sorted(run.info.run_id for run in by_cycle.values()) == sorted(summary["run_ids"])
    for cycle, run in by_cycle.items():
        metrics = run.data.metrics
        assert run.info.run_name == f"cycle-{cycle}"
        assert ROUND_METRICS | CLUSTER_METRICS <= set(metrics)
        assert {m for m in metrics if m.startswith("system/")}, "no system metrics of the root"
        assert metrics["train_examples"] == metrics["cluster-0/examples"] + metrics["cluster-1/examples"]
        # the global figures are the clusters' weighted by their evaluation examples
        weights = [metrics[f"cluster-{k}/eval_examples"] for k in (0, 1)]
        assert metrics["eval_examples"] == sum(weights)
        expected = sum(w * metrics[f"cluster-{k}/loss"] for k, w in enumerate(weights)) / sum(weights)
        assert metrics["loss"] == pytest.approx(expected)
        params = run.data.params
        assert (params["mode"], params["clusters"], params["cycles"], params["rounds"]) == \
            ("hierarchical", "2", "2", "2")
        assert params["learners_per_cluster"] == "2" and params["learners"] == "4"
        # nothing per learner: no key names a learner, node or client
        names = " ".join([*metrics, *params, *run.data.tags]).lower()
        assert not any(word in names for word in ("learner-", "learner_", "node", "client", "cid"))
        assert run.data.tags["mlflow.note.content"].startswith(f"Cycle {cycle} of 2 of FL project Tiers "
                                                                "(hierarchical): FedAvg over 2 cluster aggregators")
    entry = summary["rounds"][0]
    assert entry["clusters"]["cluster-1/accuracy"] == pytest.approx(by_cycle[1].data.metrics["cluster-1/accuracy"])
    experiment = mlflow.get_experiment_by_name("Tiers")
    assert summary["ui_url"].endswith(f"/#/experiments/{experiment.experiment_id}/runs")


def test_the_best_cycle_not_the_last_is_the_champion(local, hierarchical_run):
    import mlflow

    summary, _ = hierarchical_run
    losses = [entry["loss"] for entry in summary["rounds"]]
    assert losses[1] > losses[0]  # the corrupted cycle 2 is worse
    assert summary["best_round"] == 1 and summary["model_uri"] == "models:/Tiers@champion"
    version = mlflow.MlflowClient(tracking_uri(local)).get_model_version_by_alias("Tiers", "champion")
    assert version.version == summary["model_version"]
    assert version.run_id == runs_by_cycle(local, "Tiers")[1].info.run_id
    assert json.loads((model_dir(local, "Tiers") / "best.json").read_text())["round"] == 1
    assert champion_accuracy(tracking_uri(local), "Tiers") > 1 / 10 + 0.3  # ten digits


def test_cluster_aggregators_and_learners_send_nothing_to_the_tracking_server(local, hierarchical_run):
    summary, audit = hierarchical_run
    records = {path.name: [json.loads(line) for line in path.read_text().splitlines()]
               for path in Path(audit).glob("*.jsonl")}
    clusters = {name: events for name, events in records.items() if name.startswith("cluster-")}
    learners = {name: events for name, events in records.items() if name.startswith("learner-")}
    # 2 cluster aggregators; 4 learners and the pre-flight check (as learner 0, before anything starts)
    assert (len(clusters), len(learners)) == (2, 5), sorted(records)
    root_host, root_port = summary["aggregator_address"].rsplit(":", 1)
    cluster_addresses = set(listening_addresses(local, "Tiers").values())
    assert len(cluster_addresses) == 2
    tracking_port = int(tracking_uri(local).rsplit(":", 1)[1])
    joined = 0
    for name, events in records.items():
        assert events[0] == {"mlflow_variables": []}, f"{name} was given MLflow settings: {events[0]}"
        assert not [e for e in events if "import" in e], f"{name} imported mlflow"
        targets = {tuple(e["connect"][:2]) for e in events if "connect" in e}
        assert tracking_port not in {port for _, port in targets}, f"{name} connected to the tracking server"
        allowed = {(root_host, int(root_port))} if name in clusters else cluster_addresses
        assert targets <= allowed, f"{name} connected to {targets}"
        joined += bool(targets)
    assert joined == 6  # each cluster reached the root, each learner its cluster; the pre-flight nothing at all


def test_a_dead_cluster_aggregator_is_named_and_the_root_goes_on_with_the_others(local):
    done = round_cli(local, "--project", "Survivor", *HIERARCHY, "--cycles", "3", "--rounds", "2",
                     "--min-clusters", "1", "--timeout", "180", env={"FLOPS_FAULT_CRASH_CLUSTER": "1:2"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cluster-1 (cluster aggregator) failed (exit 3): FAULT INJECTION: cluster aggregator 1 crashes in " \
           "cycle 2" in done.stdout
    assert "note: cycle 2: 1 cluster aggregator(s) failed to return a model (cluster-1); going on with 1" in done.stdout
    by_cycle = runs_by_cycle(local, "Survivor")
    assert sorted(by_cycle) == [1, 2, 3]
    assert CLUSTER_METRICS <= set(by_cycle[1].data.metrics)
    for cycle in (2, 3):  # cluster-0 alone: its figures are the global ones
        metrics = by_cycle[cycle].data.metrics
        assert "cluster-1/loss" not in metrics
        assert metrics["loss"] == pytest.approx(metrics["cluster-0/loss"])
    assert "models:/Survivor@champion" in done.stdout
    assert champion_accuracy(tracking_uri(local), "Survivor") > 1 / 10 + 0.3


def test_too_few_cluster_aggregators_end_the_run_with_the_best_model_so_far_registered(local):
    import mlflow

    done = round_cli(local, "--project", "Stranded", *HIERARCHY, "--cycles", "3", "--rounds", "2",
                     "--timeout", "180", env={"FLOPS_FAULT_CRASH_CLUSTER": "0:2"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cycle 2: only 1 of 2 cluster aggregators returned a model (cluster-0); a cycle needs 2 " \
           "(--min-clusters)" in done.stderr
    assert "cluster-0 exited with code 3" in done.stderr
    assert "the best model so far (cycle 1) is registered: models:/Stranded@champion" in done.stdout
    version = mlflow.MlflowClient(tracking_uri(local)).get_model_version_by_alias("Stranded", "champion")
    assert version.run_id == runs_by_cycle(local, "Stranded")[1].info.run_id
    assert runs_by_cycle(local, "Stranded")[2].info.status == "FAILED"


def test_a_learner_lost_inside_a_cluster_is_handled_by_that_clusters_minimum(local):
    """Learner 1 (cluster 0's second) dies in its cluster's round 2: with --min-learners 1 that cluster goes on with
    learner 0, as a classic aggregator would, and every cycle of the project still runs to the champion."""
    done = round_cli(local, "--project", "Lossy", *HIERARCHY, "--cycles", "2", "--rounds", "2",
                     "--min-learners", "1", "--timeout", "180", env={"FLOPS_FAULT_CRASH_LEARNER": "1:2"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "learner-1 failed (exit 3): FAULT INJECTION: learner 1 crashes in round 2" in done.stdout, done.stdout
    assert "learner-1 (the cycles went on without them)" in done.stdout, done.stdout
    assert sorted(runs_by_cycle(local, "Lossy")) == [1, 2]
    assert "models:/Lossy@champion" in done.stdout


def test_with_one_round_per_cycle_the_root_computes_what_a_classic_aggregator_does(tmp_path):
    """A cycle of one round is a classic round: averaging the clusters' averages, weighted by their examples,
    gives the classic average of all learners (tracking off; same learners, data and seed)."""
    from flops_mlops.fl.best_model import BestModel
    from flops_mlops.fl.runner import run_project
    from flops_mlops.fl.settings import FLSettings

    shapes = {"classic": {"learners": 4, "rounds": 3},
              "hierarchical": {"mode": "hierarchical", "clusters": 2, "learners": 2, "cycles": 3, "rounds": 1}}
    summaries, models = {}, {}
    for mode, shape in shapes.items():
        settings = FLSettings(project="Same", tracking_uri="off", model_dir=tmp_path / mode / "model", timeout=300,
                              **shape).check("aggregator")
        summaries[mode] = run_project(settings, tmp_path / mode)
        models[mode] = BestModel(tmp_path / mode / "model").load()
    classic, hierarchical = ([value for e in summaries[mode]["rounds"]
                              for value in (e["loss"], e["accuracy"], e["train_examples"])] for mode in shapes)
    assert len(classic) == 9 and hierarchical == pytest.approx(classic)
    for ours, theirs in zip(models["hierarchical"], models["classic"]):
        assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("example", ["pytorch", "keras"])
def test_the_other_flavours_examples_train_in_hierarchical_mode(tmp_path, example):
    """The contract code is flavour-independent: the PyTorch and Keras examples, in their own environments (built
    or cached as `round` does), train through cluster aggregators (tracking off: logging their flavours is the
    classic aggregator's code, which the root runs unchanged)."""
    from flops_mlops.fl.environments import for_repository
    from flops_mlops.fl.ml_repo import resolve
    from flops_mlops.fl.runner import run_project
    from flops_mlops.fl.settings import FLSettings
    from flops_mlops.fl.supervision import Runtime

    repo = resolve(str(conftest.ROOT / "examples" / example), None, tmp_path / "repos")
    environment = for_repository(repo.dependencies(), progress=lambda *args, **kwargs: None)
    runtime = Runtime(environment.python, environment.variables(tmp_path / "runtime"))
    settings = FLSettings(project="Flavours", tracking_uri="off", model_dir=tmp_path / "model", timeout=600,
                          ml_repo=str(repo.folder), mode="hierarchical", clusters=2, learners=2, cycles=2,
                          rounds=1).check("aggregator")
    summary = run_project(settings, tmp_path / "run", runtime=runtime)
    losses = [entry["loss"] for entry in summary["rounds"]]
    assert len(losses) == 2 and losses[1] < losses[0], losses
    assert summary["rounds"][1]["accuracy"] > 1 / 10 + 0.3  # ten digits
    assert set(summary["rounds"][1]["clusters"]) == CLUSTER_METRICS


@pytest.fixture(scope="module")
def idle_stack(tmp_path_factory):
    """A configuration whose stack is never started: arguments are checked before anything needs it."""
    return conftest.TestStack.create("local", tmp_path_factory.mktemp("fl-arguments"), ["acme"])


@pytest.mark.parametrize("arguments, message", [
    (["--clusters", "2"], "--clusters: only for --mode hierarchical"),
    (["--cycles", "2", "--min-clusters", "1"], "--cycles, --min-clusters: only for --mode hierarchical"),
    (["--mode", "hierarchical", "--learners", "4"],
     "--learners: in hierarchical mode say --clusters K --learners-per-cluster N"),
    (["--mode", "hierarchical", "--clusters", "0"],
     "FLOPS_CLUSTERS/--clusters: hierarchical mode needs at least 1 cluster aggregator, got 0"),
    (["--mode", "hierarchical", "--cycles", "0"], "FLOPS_CYCLES/--cycles: expected at least 1, got 0"),
    (["--mode", "hierarchical", "--clusters", "2", "--min-clusters", "3"],
     "FLOPS_MIN_CLUSTERS/--min-clusters: expected 0 (all) to 2 (the clusters), got 3"),
    (["--mode", "hierarchical", "--learners-per-cluster", "2", "--min-learners", "3"],
     "FLOPS_MIN_LEARNERS/--min-learners: expected 0 (all) to 2 (the learners), got 3"),
    (["--mode", "hierarchical", "--learners-per-cluster", "0"], "--learners-per-cluster: expected at least 1, got 0"),
    (["--mode", "hierarchical", "--clusters", "20", "--learners-per-cluster", "4"],
     "20 clusters x 4 learners are more processes than one project should start (at most 64 learners)"),
    (["--mode", "hierarchical", "--engine", "deployment"],
     "--engine deployment: hierarchical mode runs on the legacy engine only"),
    (["--mode", "tiered"], "argument --mode: invalid choice: 'tiered'"),
])
def test_bad_hierarchical_arguments_exit_2_naming_the_flag(idle_stack, arguments, message):
    done = round_cli(idle_stack, "--project", "Args", *arguments, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert not (idle_stack.load().state_dir / "fl" / "acme" / "Args").exists()  # nothing started


def test_a_cluster_aggregators_settings_are_checked():
    from flops_mlops.fl.settings import FLSettings, SettingsError

    good = FLSettings(learners=2, cluster_index=0, cluster_address="127.0.0.1:9000")
    assert good.check("cluster") is good
    for settings, message in [
        (FLSettings(cluster_index=-1, cluster_address="127.0.0.1:9000"), "FLOPS_CLUSTER_INDEX/--cluster-index"),
        (FLSettings(cluster_index=0, cluster_address="nowhere"), "FLOPS_CLUSTER_ADDRESS: 'nowhere' is not host:port"),
        (FLSettings(cluster_index=0, cluster_address="127.0.0.1:9000", learners=2, min_learners=3),
         "expected 0 (all) to 2 (the cluster's learners), got 3"),
    ]:
        with pytest.raises(SettingsError, match=re.escape(message)):
            settings.check("cluster")
