"""A real FL round tracked end to end: `flops-mlops round` with real Flower processes against a real stack.

One local stack (SQLite + embedded FTP) is shared by the module; the native stack (MariaDB + vsftpd) gets one
run of its own. Faults are injected with the test-only FLOPS_FAULT_* variables (flops_mlops.fl.faults) or
with a TCP proxy that cuts the aggregator off from the tracking server.
"""

from __future__ import annotations

import ftplib
import json
import os
import posixpath
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import conftest
import numpy as np
import pytest
import yaml
from conftest import free_port, run_cli, stack_data
from tracking_checks import logged_in

pytestmark = pytest.mark.timeout(900)

QUIET = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
         "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
ROUND_METRICS = {"loss", "accuracy", "train_examples", "eval_examples", "round_time_s"}

# Loaded into learner and cluster aggregator processes only (PYTHONPATH, which they inherit): records the MLflow
# variables they were given, every Python-level socket connection and every mlflow import into the audit/ folder
# beside it (learner-<pid>.jsonl, cluster-<pid>.jsonl). MLflow's client talks HTTP through Python sockets, so a
# request would show here.
AUDIT_HOOK = '''
import json, os, sys
_audit_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "audit")
_role = ("cluster" if os.environ.get("FLOPS_CLUSTER_INDEX") else
         "learner" if os.environ.get("FLOPS_LEARNER_INDEX") else "")
if _role and os.path.isdir(_audit_dir):
    _log = open(os.path.join(_audit_dir, f"{_role}-{os.getpid()}.jsonl"), "a")
    _log.write(json.dumps({"mlflow_variables": sorted(k for k in os.environ if k.startswith("MLFLOW_"))}) + "\\n")
    _log.flush()
    def _audit(event, args):
        if event == "socket.connect":
            address = args[1]
            _log.write(json.dumps({"connect": list(address) if isinstance(address, tuple) else str(address)}) + "\\n")
            _log.flush()
        elif event == "import" and str(args[0]).split(".")[0] == "mlflow":
            _log.write(json.dumps({"import": args[0]}) + "\\n")
            _log.flush()
    sys.addaudithook(_audit)
'''


def round_cli(stack: conftest.TestStack, *args: str, env: dict[str, str] | None = None, timeout: float = 300):
    return run_cli("round", "--tenant", "acme", *args, config=stack.config_path, timeout=timeout,
                   env={**QUIET, **(env or {})})


def tracking_uri(stack: conftest.TestStack) -> str:
    config = stack.load()
    return config.tracking_uri(config.tenant("acme"))


def model_dir(stack: conftest.TestStack, project: str) -> Path:
    return stack.load().state_dir / "fl" / "acme" / project / "model"


def ftp_files(stack: conftest.TestStack, folder: str) -> set[str]:
    """Names of the files in ``folder`` as the tenant's FTP user sees them (NLST: vsftpd has no MLSD)."""
    config = stack.load()
    tenant = config.tenant("acme")
    with ftplib.FTP() as ftp:
        ftp.connect(config.artifact_store.host, config.artifact_store.port, timeout=10)
        ftp.login(tenant.ftp_user, stack.secrets().ftp_password("acme"))
        return {posixpath.basename(name) for name in ftp.nlst(folder)}


def sklearn_example():
    """The scikit-learn example (what `round` trains without --ml-repo): its model_manager and data_manager
    modules, imported as its learners import them."""
    from flops_mlops.fl.ml_repo import import_model_manager

    model_manager = import_model_manager(conftest.ROOT / "examples" / "sklearn")
    import data_manager

    return model_manager, data_manager


def champion_accuracy(uri: str, project: str) -> float:
    """The champion's accuracy on the digits no learner holds."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    x, y = sklearn_example()[1].held_out(42)
    return float((mlflow.pyfunc.load_model(f"models:/{project}@champion").predict(x) == y).mean())


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fl-local")
    stack = conftest.TestStack.create("local", folder, ["acme"])
    stack.up()
    with logged_in(stack.admin()):  # this test process reads runs and models as the tenant's admin
        yield stack
    stack.cli("down", "--purge")


@pytest.fixture(scope="module")
def corrupted_run(local, tmp_path_factory):
    """3 rounds, 2 learners; round 3's aggregate is corrupted (so round 2 is the best); learners audited."""
    hooks = tmp_path_factory.mktemp("audit-hook")
    (hooks / "sitecustomize.py").write_text(AUDIT_HOOK, encoding="utf-8")
    audit = hooks / "audit"
    audit.mkdir()
    done = round_cli(local, "--project", "Fraud", "--rounds", "3", "--learners", "2", "--json", env={
        "FLOPS_FAULT_CORRUPT_ROUND": "3", "PYTHONPATH": str(hooks),
        # Would lead a learner straight to the tracking server, if the runner passed it on:
        "MLFLOW_TRACKING_URI": tracking_uri(local)})
    assert done.returncode == 0, done.stderr
    assert "round 3/3" in done.stderr  # progress goes to stderr with --json
    return json.loads(done.stdout), audit


def test_one_run_per_round_with_aggregated_metrics(local, corrupted_run):
    import mlflow

    summary, _ = corrupted_run
    mlflow.set_tracking_uri(tracking_uri(local))
    runs = mlflow.search_runs(experiment_names=["Fraud"], output_format="list")
    assert len(runs) == 3 and sorted(r.info.run_id for r in runs) == sorted(summary["run_ids"])
    for run in runs:
        metrics = set(run.data.metrics)
        assert ROUND_METRICS <= metrics
        assert {m for m in metrics if m.startswith("system/")}, "no system metrics"
        assert run.data.tags["flops.project"] == "Fraud"
        assert run.data.tags["flops.code_version"]
        assert run.info.run_name == f"round-{run.data.tags['flops.round']}"
        assert run.data.params["strategy"] == "FedAvg" and run.data.params["min_learners"] == "2"
        # only aggregates: no key or value names a learner, node or client
        names = " ".join([*metrics, *run.data.params, *run.data.tags, *map(str, run.data.params.values())]).lower()
        assert not any(word in names for word in ("learner_", "node", "client", "cid", "partition"))
        # the description the UI shows on the run's page
        assert run.data.tags["mlflow.note.content"].startswith(
            f"Round {run.data.tags['flops.round']} of 3 of FL project Fraud: FedAvg over 2 learners")
    experiment = mlflow.get_experiment_by_name("Fraud")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens it on its runs
    by_round = {int(r.data.tags["flops.round"]): r for r in runs}
    assert [e["round"] for e in summary["rounds"]] == [1, 2, 3]
    # the printed links: the runs view, the best round's run, the registered model's version
    ui = tracking_uri(local)
    runs_view = f"{ui}/#/experiments/{experiment.experiment_id}/runs"
    assert summary["ui_url"] == runs_view
    # the view that link opens (the tracking server's UI takes it as the browser's own view: tracking/ui.py)
    view = json.loads(experiment.tags["mlflow.sharedViewState.flops-rounds"])
    assert {"metrics.`loss`", "metrics.`accuracy`"} <= set(view["selectedColumns"])
    assert summary["best_run_url"] == f"{runs_view}/{by_round[summary['best_round']].info.run_id}"
    assert summary["model_url"] == f"{ui}/#/models/Fraud/versions/{summary['model_version']}"
    assert by_round[2].data.metrics["loss"] == pytest.approx(summary["rounds"][1]["loss"])


def test_registered_model_is_the_best_round_not_the_last(local, corrupted_run):
    import mlflow
    from flops_mlops.fl.best_model import BestModel

    summary, _ = corrupted_run
    losses = [e["loss"] for e in summary["rounds"]]
    assert losses[2] > losses[1]  # the corrupted last round is worse
    assert summary["best_round"] == 2 and summary["model_uri"] == "models:/Fraud@champion"
    mlflow.set_tracking_uri(tracking_uri(local))
    version = mlflow.MlflowClient().get_model_version_by_alias("Fraud", "champion")
    assert version.version == summary["model_version"]
    assert version.run_id == summary["run_ids"][1]  # logged into round 2's run
    best = BestModel(model_dir(local, "Fraud"))
    assert json.loads(best.info_file.read_text())["round"] == 2
    model_manager, data_manager = sklearn_example()
    x, _ = data_manager.held_out(42)
    served = mlflow.pyfunc.load_model("models:/Fraud@champion").predict(x)
    kept = model_manager.ModelManager()
    kept.set_model_parameters(best.load())
    assert (served == kept.get_model().predict(x)).all()


def test_the_projects_files_on_disk_are_its_owners_only(local, corrupted_run):
    """The best model, the actors' logs and working files of a `round`: folders 0700, files 0600, from the
    state dir's fl folder down (docs/security.md)."""
    fl = local.load().state_dir / "fl"
    work = fl / "acme" / "Fraud"
    assert (work / "model" / "best.npz").is_file()
    for path in (fl, fl / "acme", *work.rglob("*")):
        if path.is_symlink():
            continue  # runtime/flops_mlops: a link to the installed package
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {mode:o}"


def test_the_next_round_closes_runs_an_earlier_training_left_running(local):
    """A training whose tracking server or database went away leaves its open run RUNNING; the project's next
    `round` marks it FAILED (tag flops.failure says why) before it trains, and touches nothing else: another
    project's open run, or a run of the same experiment no FL training made."""
    import mlflow
    from flops_mlops.fl.recovery import project_lock

    client = mlflow.MlflowClient(tracking_uri(local))
    runs = {}
    for project, tags in (("Stale", {"flops.project": "Stale", "flops.round": "2"}), ("Stale", {}),
                          ("Elsewhere", {"flops.project": "Elsewhere"})):
        experiment = client.get_experiment_by_name(project)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(project)
        runs[(project, bool(tags))] = client.create_run(experiment_id, tags=tags, run_name="round-2").info.run_id

    # While a training of the project holds its lock, a second `round` of it is refused, and closes nothing.
    with project_lock(model_dir(local, "Stale").parent, "acme", "Stale"):
        refused = round_cli(local, "--project", "Stale", "--rounds", "1")
    assert refused.returncode == 1 and "another `round` of project Stale of tenant acme is running" in refused.stderr
    assert client.get_run(runs[("Stale", True)]).info.status == "RUNNING"

    done = round_cli(local, "--project", "Stale", "--rounds", "2")
    assert done.returncode == 0, done.stderr
    stale = client.get_run(runs[("Stale", True)])
    assert stale.info.status == "FAILED" and "marked FAILED by the project's next round" in stale.data.tags[
        "flops.failure"]
    assert f"marked FAILED: 1 run(s) an earlier training of Stale left RUNNING (tag flops.failure): round-2 " \
           f"({stale.info.run_id})" in done.stdout
    assert client.get_run(runs[("Stale", False)]).info.status == "RUNNING"  # not made by a training
    assert client.get_run(runs[("Elsewhere", True)]).info.status == "RUNNING"  # another project's
    trained = client.search_runs([stale.info.experiment_id], "tags.`flops.project` = 'Stale'")
    assert sorted(r.info.status for r in trained) == ["FAILED", "FINISHED", "FINISHED"]


def test_champion_predicts_held_out_data_better_than_chance(local, corrupted_run):
    assert champion_accuracy(tracking_uri(local), "Fraud") > 1 / 10 + 0.3  # ten digits


def test_model_files_are_in_the_tenants_ftp_folder(local, corrupted_run):
    summary, _ = corrupted_run
    model_id = summary["logged_model_uri"].removeprefix("models:/")
    names = ftp_files(local, f"/artifacts/{summary['experiment_id']}/models/{model_id}/artifacts")
    assert {"MLmodel", "model.skops", "requirements.txt", "input_example.json"} <= names
    requirements = (local.load().state_dir / "ftp" / "flops_acme" / "artifacts" / summary["experiment_id"]
                    / "models" / model_id / "artifacts" / "requirements.txt").read_text()
    assert "scikit-learn==" in requirements and "skops==" in requirements


def test_learners_make_no_request_to_the_tracking_server(local, corrupted_run):
    summary, audit = corrupted_run
    records = {path.name: [json.loads(line) for line in path.read_text().splitlines()]
               for path in Path(audit).glob("learner-*.jsonl")}
    # the two learners, and the pre-flight check (run as learner 0 with its data, before the aggregator starts)
    assert len(records) == 3, "the audit hook did not run in the learners and the pre-flight"
    host, port = summary["aggregator_address"].rsplit(":", 1)
    joined = 0
    for name, events in records.items():
        assert not [e for e in events if "import" in e], f"{name} imported mlflow"
        assert events[0] == {"mlflow_variables": []}, f"{name} was given MLflow settings"
        targets = {tuple(e["connect"][:2]) for e in events if "connect" in e}
        assert targets <= {(host, int(port))}, f"{name} connected to {targets}"
        joined += bool(targets)
    assert joined == 2  # the learners reached the aggregator, and nothing else; the pre-flight nothing at all


def test_deployment_engine_runs_the_same_project(local):
    """ServerApp/ClientApp on flower-superlink + flower-supernode + flwr run (about 25 s per round)."""
    import mlflow

    done = round_cli(local, "--project", "Engine", "--rounds", "2", "--engine", "deployment", "--json",
                     "--timeout", "400", timeout=500)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    mlflow.set_tracking_uri(tracking_uri(local))
    runs = mlflow.search_runs(experiment_names=["Engine"], output_format="list")
    assert sorted(r.info.run_id for r in runs) == sorted(summary["run_ids"]) and len(runs) == 2
    assert all(ROUND_METRICS <= set(r.data.metrics) for r in runs)
    assert champion_accuracy(tracking_uri(local), "Engine") > 0.6


def test_a_crashing_learner_fails_the_run_and_keeps_the_best_model(local):
    done = round_cli(local, "--project", "Crash", "--rounds", "3", "--timeout", "120",
                     env={"FLOPS_FAULT_CRASH_LEARNER": "1:2"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "learner-1 exited with code 3" in done.stderr
    assert "learner 1 crashes in round 2" in done.stderr
    best = model_dir(local, "Crash")
    assert json.loads((best / "best.json").read_text())["round"] == 1
    assert (best / "best.npz").exists()


class CuttingProxy:
    """Forwards TCP to the tracking server until the aggregator starts a second run (round 2), then acts as a
    server that went down: that connection is dropped and new ones are refused. The Host header is rewritten
    to the server's own address (its security middleware accepts only known hosts)."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.runs_created = 0
        self.down = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.down.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, inspect: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if inspect:
                    chunk = chunk.replace(f"Host: 127.0.0.1:{self.port}".encode(),
                                          f"Host: 127.0.0.1:{self.target[1]}".encode())
                if inspect and b"/api/2.0/mlflow/runs/create" in chunk:
                    self.runs_created += 1
                    if self.runs_created >= 2:
                        self.cut()
                        return
                sink.sendall(chunk)
        except OSError:
            pass

    def cut(self) -> None:
        self.down.set()
        for sock in [self.listener, *self.sockets]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def test_tracking_server_going_down_fails_the_run_and_keeps_the_best_model(local, tmp_path):
    config = local.load()
    proxy = CuttingProxy(config.tracking_port(config.tenant("acme")))
    data = {**local.data, "tenants": [{"id": "acme", "port": proxy.port}]}
    path = tmp_path / "via-proxy.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    done = run_cli("round", "--tenant", "acme", "--project", "Outage", "--rounds", "4", "--timeout", "120",
                   config=path, env=QUIET, timeout=300)
    proxy.cut()
    assert proxy.runs_created >= 2, done.stdout + done.stderr
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"tracking server http://127.0.0.1:{proxy.port}: starting the run of round 2 failed" in done.stderr
    assert "round 1/4" in done.stdout
    best = model_dir(local, "Outage")
    # Rounds train while their runs are logged in the background, so the failure may surface only after the
    # last round: the best model of the rounds that trained stays on disk.
    kept = json.loads((best / "best.json").read_text())
    assert 1 <= kept["round"] <= 4 and np.isfinite(kept["loss"])
    assert (best / "best.npz").exists()


def test_a_store_down_at_the_final_upload_leaves_a_kept_model_that_publish_kept_registers(local, tmp_path):
    """The FTP store dies between the last round and the final upload: the round exits 1, says the best model is
    kept and how to register it; once the store is back, that command registers it as the champion, in the best
    round's run, and it predicts."""
    import mlflow

    from flops_mlops.processes import ManagedProcess

    config = local.load()
    hold = tmp_path / "hold"
    hold.mkdir()
    argv = [*conftest.CLI, "--config", str(local.config_path), "round", "--tenant", "acme", "--project", "Kept",
            "--rounds", "3", "--timeout", "200"]
    training = subprocess.Popen(argv, cwd=conftest.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **QUIET, "FLOPS_FAULT_HOLD_BEFORE_UPLOAD": str(hold)})
    try:
        for _ in range(2400):  # the three rounds train, then the aggregator holds
            if (hold / "ready").exists() or training.poll() is not None:
                break
            threading.Event().wait(0.1)
        assert (hold / "ready").exists(), training.communicate(timeout=60)
        assert ManagedProcess("artifact-store", config.state_dir).stop()  # the FTP store goes down
        (hold / "go").touch()
        out, err = training.communicate(timeout=300)
    finally:
        if training.poll() is None:
            training.kill()
        local.up()  # the store comes back (also for the tests after this one)
    assert training.returncode == 1, out + err
    kept = json.loads((model_dir(local, "Kept") / "best.json").read_text())
    assert f"the best model (round {kept['round']}) is kept in" in out, out + err
    command = next(line.split("register it with: ", 1)[1] for line in out.splitlines() if "register it with: " in line)
    assert command.endswith("--publish-kept") and "--project Kept" in command
    client = mlflow.MlflowClient(tracking_uri(local))
    assert not client.search_model_versions("name='Kept'")  # nothing registered while the store was down
    published = run_cli(*command.split()[3:], config=local.config_path, env=QUIET, timeout=300)
    assert published.returncode == 0, published.stdout + published.stderr
    assert "registered:       models:/Kept@champion (version 1" in published.stdout, published.stdout
    version = client.get_model_version_by_alias("Kept", "champion")
    assert client.get_run(version.run_id).data.tags["flops.round"] == str(kept["round"])
    assert champion_accuracy(tracking_uri(local), "Kept") > 0.5
    # Without a kept model there is nothing to publish: exit 2, naming the folder.
    nothing = round_cli(local, "--project", "NeverTrained", "--publish-kept")
    assert nothing.returncode == 2 and "holds no kept model" in nothing.stderr, nothing.stdout + nothing.stderr


def test_aggregator_exits_at_once_when_the_tracking_server_is_unreachable(tmp_path):
    env = {**os.environ, **QUIET, "FLOPS_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
           "FLOPS_PROJECT": "Nowhere", "FLOPS_AGGREGATOR_ADDRESS": f"127.0.0.1:{free_port()}",
           "FLOPS_MODEL_DIR": str(tmp_path / "model"), "FLOPS_TIMEOUT": "60"}
    done = subprocess.run([sys.executable, "-m", "flops_mlops.fl.aggregator"], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1
    assert "opening experiment 'Nowhere' failed" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_round_refuses_a_tracking_server_that_is_not_up(tmp_path):
    data = stack_data("local", tmp_path, ["acme"])
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    done = run_cli("round", "--tenant", "acme", "--project", "Idle", config=path, env=QUIET, timeout=60)
    assert done.returncode == 1
    assert "is not answering; start the stack first" in done.stderr


def test_mlflow_system_metrics_appear_for_a_round_of_a_few_seconds(local, tmp_path):
    """The tracking policy alone (no Flower): a 2-s round gets MLflow's sampled host metrics."""
    import time

    import mlflow
    from flops_mlops.fl.best_model import BestModel, RoundResult
    from flops_mlops.fl.round_tracker import RoundTracker

    tracker = RoundTracker(tracking_uri(local), "Sampling", BestModel(tmp_path / "model"), {"strategy": "none"})
    tracker.open()
    tracker.round_started(1)
    time.sleep(2)
    tracker.round_finished(RoundResult(1, 0.5, 0.8, 10, 5, 2.0), [np.zeros((3, 8)), np.zeros(3)])
    tracker.flush()  # rounds are logged in the background
    run = mlflow.MlflowClient(tracking_uri(local)).get_run(tracker.run_ids[1])
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert "system/system_memory_usage_megabytes" in run.data.metrics


def process_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, **QUIET, "FLOPS_PROJECT": "Local", "FLOPS_TRACKING_URI": "off",
            "FLOPS_MODEL_DIR": str(tmp_path / "model"), "FLOPS_TIMEOUT": "60", **extra}


def test_learners_started_before_the_aggregator_wait_for_it(tmp_path):
    import time

    env = process_env(tmp_path, FLOPS_AGGREGATOR_ADDRESS=f"127.0.0.1:{free_port()}")
    learners = [subprocess.Popen([sys.executable, "-m", "flops_mlops.fl.learner"], cwd=tmp_path,
                                 env={**env, "FLOPS_LEARNER_INDEX": str(i)}, stderr=subprocess.PIPE, text=True)
                for i in range(2)]
    time.sleep(4)  # the learners find no aggregator for a while
    aggregator = subprocess.run([sys.executable, "-m", "flops_mlops.fl.aggregator"], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
    assert aggregator.returncode == 0, aggregator.stderr
    for learner in learners:
        assert learner.wait(timeout=60) == 0, learner.stderr.read()
    assert json.loads((tmp_path / "model" / "best.json").read_text())["round"] == 3


def test_a_strategy_error_ends_the_run_instead_of_hanging(tmp_path):
    from flops_mlops.fl.runner import FLRunError, run_project
    from flops_mlops.fl.settings import FLSettings

    settings = FLSettings(project="Broken", tracking_uri="off", model_dir=tmp_path / "model", timeout=120)
    with pytest.raises(FLRunError) as failure:
        run_project(settings.check("aggregator"), tmp_path, env={"FLOPS_FAULT_STRATEGY_ERROR_ROUND": "2"})
    assert "aggregator exited with code 1" in str(failure.value)
    assert "strategy error in round 2" in str(failure.value)
    assert json.loads((tmp_path / "model" / "best.json").read_text())["round"] == 1


def test_the_aggregator_gives_up_at_its_timeout(tmp_path):
    env = process_env(tmp_path, FLOPS_AGGREGATOR_ADDRESS=f"127.0.0.1:{free_port()}", FLOPS_TIMEOUT="5")
    done = subprocess.run([sys.executable, "-m", "flops_mlops.fl.aggregator"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # no learner ever comes
    assert done.returncode == 1
    assert "did not finish within 5 s (FLOPS_TIMEOUT)" in done.stderr


@pytest.mark.services
def test_round_on_the_native_stack_lands_in_the_tenants_database_and_ftp(make_stack):
    import pymysql

    stack = make_stack("native")
    stack.up()
    done = round_cli(stack, "--project", "Native", "--rounds", "2", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    config = stack.load()
    tenant = config.tenant("acme")
    with pymysql.connect(host=config.backend_store.host, port=config.backend_store.port, user=tenant.db_user,
                         password=stack.secrets().db_password("acme"), database=tenant.database) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM runs WHERE experiment_id = %s", (summary["experiment_id"],))
            assert cur.fetchone()[0] == 2
            cur.execute("SELECT COUNT(DISTINCT run_uuid) FROM metrics WHERE `key` IN ('loss', 'accuracy') "
                        "AND run_uuid IN %s", (summary["run_ids"],))
            assert cur.fetchone()[0] == 2
            cur.execute("SELECT version FROM registered_model_aliases WHERE name = 'Native' AND alias = 'champion'")
            assert str(cur.fetchone()[0]) == summary["model_version"]
    model_id = summary["logged_model_uri"].removeprefix("models:/")
    names = ftp_files(stack, f"/artifacts/{summary['experiment_id']}/models/{model_id}/artifacts")
    assert {"MLmodel", "model.skops", "requirements.txt"} <= names
    with logged_in(stack.admin()):
        assert champion_accuracy(config.tracking_uri(tenant), "Native") > 0.6


def test_a_round_open_when_the_watchdog_fires_is_marked_failed(local, tmp_path):
    """The timeout watchdog runs in its own thread; MLflow's active run is thread-local."""

    import mlflow
    from flops_mlops.fl.best_model import BestModel
    from flops_mlops.fl.round_tracker import RoundTracker

    tracker = RoundTracker(tracking_uri(local), "Watchdog", BestModel(tmp_path / "model"), {"strategy": "FedAvg"})
    tracker.open()
    tracker.round_started(1)
    run_id = tracker.run_id
    watchdog = threading.Thread(target=tracker.fail)
    watchdog.start()
    watchdog.join()
    try:
        assert mlflow.MlflowClient(tracking_uri(local)).get_run(run_id).info.status == "FAILED"
    finally:
        mlflow.end_run(status="FAILED")  # this test process's own active run
