"""compose.yaml for real: the stack comes up healthy under Docker Compose, logs through the published tracking
port (logged in: every request needs one) land on the artifact-store volume and in MySQL, the `fl` profile runs
an FL project in containers (the aggregator with its own project login), and the named volumes keep (down/up)
or drop (down -v) the data, logins included. Attacks on the running stack: test_compose_security.py.

The images must exist: scripts/compose-ci.sh builds them on a machine without a registry and the tests then
use its override (FLOPS_COMPOSE_OVERRIDE=compose.ci.yaml); elsewhere `docker compose build` / `pull` first.
Without a Docker engine, Compose v2 or the images these tests skip, or fail with FLOPS_REQUIRE_SERVICES=1.
Every session uses its own compose project name and free ports, and removes its containers and volumes
(tests/compose/compose_stack.py).
"""

from __future__ import annotations

import ftplib
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import requests
import tracking_checks
import yaml
from compose_stack import (
    DEFAULT_FL_PROJECT,
    FL_SERVICES,
    ONE_SHOT,
    QUIET,
    SERVICES,
    TENANT,
    VOLUMES,
    compose_config,
    compose_config,
    db_password,  # noqa: F401 (stack: the fixture)
    ftp_password,
    need_compose,
    stack,
    torch_example_image,
)
from conftest import ROOT, free_port, run_cli

pytestmark = [pytest.mark.docker, pytest.mark.services, pytest.mark.timeout(1800)]


# --- the file itself (needs only the compose CLI) ---------------------------------------------------------------


def test_compose_config_accepts_env_example():
    need_compose()
    # The user's file alone (no CI override).
    config = compose_config(ROOT / ".env.example", "--profile", "fl", files=["-f", str(ROOT / "compose.yaml")])
    assert set(config["services"]) == {*SERVICES, *ONE_SHOT, *FL_SERVICES}
    for name, service in config["services"].items():
        assert service["image"] and not service["image"].endswith(":latest"), name
        assert ":" in service["image"], f"{name}: image tag is not pinned"
        assert service.get("restart") in ("unless-stopped", "no", "always", "on-failure"), name
        assert int(service["mem_limit"]) > 0, f"{name}: no memory limit"
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name}: published beyond loopback by default"
    # The backend store is ours (deploy/images/backend-store), built like the others: what the tests run.
    assert config["services"]["backend-store"]["image"] == "flops-mlops/backend-store:0.1.0"
    assert config["services"]["backend-store"]["build"]["dockerfile"] == "deploy/images/backend-store/Dockerfile"
    # backend_store.tls: the entrypoint starts as root to give mariadbd its copy of the key, which runs as mysql
    assert "user" not in config["services"]["backend-store"]
    assert {v["name"] for v in config["volumes"].values()} == {"flops-mlops_backend-store", "flops-mlops_artifact-store",
                                                               "flops-mlops_tracking-auth"}
    # The login database survives the container: on the named volume, where the server expects it.
    tracking = config["services"]["tracking-server"]
    assert {(m["source"], m["target"]) for m in tracking["volumes"]} == {("tracking-auth", "/srv/mlflow/auth")}
    assert tracking["environment"]["FLOPS_AUTH_DB"].startswith("/srv/mlflow/auth/")
    # A shell script with curl (no Python interpreter every few seconds; bench/tracking_healthcheck.py).
    assert tracking["healthcheck"]["test"] == ["CMD", "flops-tracking-healthcheck"]
    assert tracking["healthcheck"]["interval"] == "10s"
    # The aggregator starts its learners and waits for its login; the model server needs only a tracking server.
    assert {name: condition["condition"] for name, condition in config["services"]["fl-aggregator"][
        "depends_on"].items()} == {"tracking-server": "service_healthy", "fl-learner-0": "service_started",
                                   "fl-learner-1": "service_started"}
    assert "depends_on" not in config["services"]["fl-learner-0"]
    serving = compose_config(ROOT / ".env.example", "--profile", "serve", files=["-f", str(ROOT / "compose.yaml")])
    assert set(serving["services"]) == {*SERVICES, *ONE_SHOT, "model-server"}
    assert serving["services"]["model-server"]["depends_on"] == {
        "tracking-server": {"condition": "service_healthy", "required": True}}
    ftp_ports = config["services"]["artifact-store"]["ports"]
    assert {(p["target"], p["published"]) for p in ftp_ports} >= {(21, "2121"), (30000, "30000"), (30009, "30009")}


def test_only_the_aggregator_is_told_where_the_tracking_server_is():
    need_compose()
    services = compose_config(ROOT / ".env.example", "--profile", "fl",
                              files=["-f", str(ROOT / "compose.yaml")])["services"]
    assert services["fl-aggregator"]["environment"]["FLOPS_TRACKING_URI"] == "https://tracking-server:5000"
    # ... verifies it against the deployment's CA (tracking.tls) ...
    assert services["fl-aggregator"]["environment"]["MLFLOW_TRACKING_SERVER_CERT_PATH"] == "/etc/flops-tls/ca.crt"
    # ... and prints links for a browser on the host: the published port.
    assert services["fl-aggregator"]["environment"]["FLOPS_UI_URL"] == "https://127.0.0.1:5000"
    # ... and logs in as its project's user, with the FL password the tracking server created that user with.
    aggregator = services["fl-aggregator"]["environment"]
    tracking = services["tracking-server"]["environment"]
    assert aggregator["MLFLOW_TRACKING_USERNAME"] == f"fl-{DEFAULT_FL_PROJECT}"
    assert tracking["FLOPS_FL_USERS"] == f"{DEFAULT_FL_PROJECT}:{aggregator['MLFLOW_TRACKING_PASSWORD']}"
    for learner in ("fl-learner-0", "fl-learner-1"):
        environment = services[learner]["environment"]
        assert not [key for key in environment if "TRACKING" in key or key.startswith("MLFLOW")], environment
        # No login of any kind: no MLFLOW_TRACKING_* (username, password, token, URI) and no password at all.
        assert not [key for key in environment if key.startswith("MLFLOW_TRACKING_")], environment
        assert not [key for key in environment if "PASSWORD" in key or "SECRET" in key], environment
        assert environment["FLOPS_AGGREGATOR_ADDRESS"] == services["fl-aggregator"]["environment"][
            "FLOPS_AGGREGATOR_ADDRESS"]


def test_compose_yaml_holds_no_password_and_names_match_the_config_model():
    from flops_mlops.configuration.tracking import Tenant

    text = (ROOT / "compose.yaml").read_text(encoding="utf-8")
    assert "latest" not in text
    for match in re.finditer(r"(?m)^\s+(\w*PASSWORD\w*):\s*(.+)$", text):
        assert match.group(2).startswith("${") and ":?" in match.group(2), match.group(0)
    # The other secrets too: the secret key, and the FL user's password inside FLOPS_FL_USERS.
    secret_lines = list(re.finditer(r"(?m)^\s+(\w*(?:SECRET|FL_USERS)\w*):\s*(.+)$", text))
    assert len(secret_lines) == 2
    for match in secret_lines:
        assert re.fullmatch(r"(\$\{[A-Z_]+:-\w+\}:)?\$\{[A-Z_]+:\?[^}]+\}", match.group(2)), match.group(0)
    tenant = Tenant(id=TENANT)
    services = yaml.safe_load(text)["services"]
    assert services["backend-store"]["environment"]["MYSQL_DATABASE"] == tenant.database
    assert services["backend-store"]["environment"]["MYSQL_USER"] == tenant.db_user
    assert services["artifact-store"]["environment"]["FLOPS_FTP_USERS"] == \
        f"{tenant.ftp_user}=FLOPS_TENANT_{TENANT.upper()}_FTP_PASSWORD"
    assert services["tracking-server"]["environment"]["FLOPS_TENANT"] == tenant.id


def test_secrets_init_writes_everything_compose_needs(tmp_path):
    need_compose()
    data = yaml.safe_load((ROOT / "configs" / "compose.yaml").read_text(encoding="utf-8"))
    data.update(state_dir=str(tmp_path / "state"), secrets_file=str(tmp_path / ".env"))
    config_path = tmp_path / "compose-stack.yaml"
    config_path.write_text(yaml.safe_dump(data), encoding="utf-8")
    run_cli("secrets", "init", config=config_path, check=True)
    assert oct((tmp_path / ".env").stat().st_mode & 0o777) == "0o600"
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("FLOPS_TENANT_") and
                 k != "FLOPS_MYSQL_ADMIN_PASSWORD"}
    result = subprocess.run(["docker", "compose", "-f", str(ROOT / "compose.yaml"), "--env-file",
                             str(tmp_path / ".env"), "config", "--quiet"],
                            capture_output=True, text=True, cwd=ROOT, env=clean_env)
    assert result.returncode == 0, result.stderr


# --- the real stack (one per module: compose_stack.stack) ------------------------------------------------


def test_stack_comes_up_healthy(stack):
    states = [json.loads(line) for line in stack.compose("ps", "--format", "json").stdout.splitlines() if line]
    assert {s["Service"]: s["Health"] for s in states} == {name: "healthy" for name in SERVICES}
    assert requests.get(f"{stack.tracking_uri}/health", timeout=10).status_code == 200


def test_logged_model_lands_on_the_artifact_volume_and_in_mysql(stack, monkeypatch):
    for key, value in QUIET.items():
        monkeypatch.setenv(key, value)
    logged = tracking_checks.log_example(stack.tracking_uri, experiment="compose-smoke", login=stack.admin)

    # The model's files are on the artifact-store volume, in the tenant's chrooted folder ...
    folder = (f"/srv/ftp/flops_{TENANT}/artifacts/{logged.experiment_id}/models/{logged.model_id}/artifacts")
    on_volume = stack.exec("artifact-store", "find", folder, "-type", "f").stdout.split()
    assert {"MLmodel", "requirements.txt", "input_example.json"} <= {Path(p).name for p in on_volume}
    # ... reachable as the tenant's FTP user through the published control port and passive range ...
    assert "MLmodel" in tracking_checks.model_files_on_ftp(
        "127.0.0.1", stack.ports["FLOPS_FTP_PORT"], f"flops_{TENANT}", ftp_password(stack), logged, ca=stack.ca)
    with stack.ftp() as ftp:  # passive mode announces pasv_address and a port of the published range
        ftp.login(f"flops_{TENANT}", ftp_password(stack))
        announced_host, announced_port = ftplib.parse227(ftp.sendcmd("PASV"))
    assert announced_host == "127.0.0.1"
    assert stack.ports["FLOPS_FTP_PASV_MIN_PORT"] <= announced_port <= stack.ports["FLOPS_FTP_PASV_MAX_PORT"]
    # ... and nowhere in the tracking server's container (it only proxies).
    leftovers = stack.exec("tracking-server", "python", "-c",
                           "import os, sys; print('\\n'.join(os.path.join(d, n) for d, ds, fs in os.walk('/')"
                           " if not d.startswith(('/proc', '/sys')) for n in ds + fs if sys.argv[1] in n))",
                           logged.model_id).stdout.split()
    assert leftovers == []

    # The metadata rows are in the tenant's MySQL database (published port), which has a binary collation:
    # metric keys that differ only in case ("accuracy", "Accuracy") are both kept.
    counts = tracking_checks.mysql_counts("127.0.0.1", stack.ports["FLOPS_MYSQL_PORT"], f"mlflow_{TENANT}",
                                          db_password(stack), f"mlflow_{TENANT}", logged)
    assert counts == {"runs": 1, "params": 2, "metrics": 2, "logged_models": 1}
    # The server is the one we ship (our backend-store image: Debian's MariaDB 10.11), with the collation and
    # auth plugin the other targets' MariaDB reports too.
    port = stack.ports["FLOPS_MYSQL_PORT"]
    tracking_checks.assert_the_tested_mariadb(tracking_checks.backend_store_facts(
        "127.0.0.1", port, (f"mlflow_{TENANT}", db_password(stack)), f"mlflow_{TENANT}"))
    assert tracking_checks.auth_plugins(f"mlflow_{TENANT}", host="127.0.0.1", port=port, user="root",
                                        password=stack.secrets["FLOPS_MYSQL_ADMIN_PASSWORD"]) == {
        tracking_checks.TENANT_AUTH_PLUGIN}

    # The model loads back through the tracking server and predicts.
    assert list(tracking_checks.load_and_predict(stack.tracking_uri, logged.model_uri, login=stack.admin)) == [1, 0]


def test_passwords_are_in_no_command_line(stack):
    script = ("import os, sys\n"
              "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
              "    try: print(open(f'/proc/{pid}/cmdline', 'rb').read().replace(b'\\0', b' ').decode())\n"
              "    except OSError: pass\n")
    command_lines = stack.exec("tracking-server", "python", "-c", script).stdout
    # The server is one process, the runner (the entrypoint replaced itself with it), with no `mlflow server`.
    assert "-m flops_mlops.tracking.runner " in command_lines and "mlflow server" not in command_lines
    for key in ("FLOPS_TENANT_DEFAULT_DB_PASSWORD", "FLOPS_TENANT_DEFAULT_FTP_PASSWORD",
                "FLOPS_MYSQL_ADMIN_PASSWORD", "FLOPS_TENANT_DEFAULT_ADMIN_PASSWORD",
                "FLOPS_TENANT_DEFAULT_SECRET_KEY", "FLOPS_TENANT_DEFAULT_FL_PASSWORD"):
        assert stack.secrets[key] not in command_lines, key


def test_fl_profile_runs_a_project_in_containers(stack, monkeypatch):
    import mlflow

    for key, value in QUIET.items():
        monkeypatch.setenv(key, value)
    project, rounds = "ComposeFL", 3
    # The tracking server is recreated with FLOPS_FL_USERS for this project; `run` starts the learners, then the
    # aggregator in the foreground once the server's healthcheck has seen user fl-ComposeFL.
    fl_env = {"FLOPS_FL_PROJECT": project, "FLOPS_FL_ROUNDS": str(rounds)}
    stack.compose("up", "--detach", "--wait", "--pull", "never", "--no-build", "tracking-server", extra_env=fl_env)
    ran = stack.compose("run", "--rm", "--use-aliases", "--pull", "never", "fl-aggregator", extra_env=fl_env)
    learners = {service: subprocess.run(["docker", "wait", stack.compose("--profile", "fl", "ps", "--all", "--quiet",
                                                                         service, extra_env=fl_env).stdout.strip()],
                                        capture_output=True, text=True, timeout=300).stdout.strip()
                for service in FL_SERVICES[1:]}
    logs = ran.stdout + ran.stderr + stack.compose("--profile", "fl", "logs", "--no-color", *FL_SERVICES[1:],
                                                   extra_env=fl_env).stdout
    assert learners == {service: "0" for service in FL_SERVICES[1:]}, logs[-6000:]
    # The summary is for a person, as native `round` prints it.
    assert f"summary of {project} " in ran.stdout and "FLOPS_EVENT" not in logs, logs[-6000:]
    best_round = int(re.search(r"^best round: +(\d+)$", ran.stdout, re.MULTILINE).group(1))
    # The aggregator's login (and every other secret) stays out of the FL actors' logs.
    assert not [key for key, value in stack.secrets.items() if value and value in logs]

    # The aggregator logged in as its project's user, which may edit this project and nothing else.
    user, _ = stack.fl_login(project)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", stack.admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack.admin[1])
    mlflow.set_tracking_uri(stack.tracking_uri)
    experiment = mlflow.get_experiment_by_name(project)
    assert experiment is not None
    for resource_type, resource_id in (("experiment", experiment.experiment_id), ("registered_model", project)):
        grant = stack.api("GET", "/api/3.0/mlflow/users/permissions/get", login=stack.admin,
                          params={"username": user, "resource_type": resource_type, "resource_id": resource_id})
        assert grant.status_code == 200 and grant.json()["permission"] == "EDIT", (resource_type, grant.text)
    runs = mlflow.search_runs(experiment_ids=[experiment.experiment_id], output_format="list")
    assert sorted(int(r.data.tags["flops.round"]) for r in runs) == list(range(1, rounds + 1))
    assert all(r.info.status == "FINISHED" for r in runs)
    version = mlflow.MlflowClient().get_model_version_by_alias(project, "champion")
    assert version.run_id == next(r.info.run_id for r in runs if r.data.tags["flops.round"] == str(best_round))
    model = mlflow.pyfunc.load_model(f"models:/{project}@champion")
    assert len(model.predict(model.metadata.load_input_example())) == 5
    model_files = stack.exec("artifact-store", "find", f"/srv/ftp/flops_{TENANT}/artifacts/{experiment.experiment_id}",
                             "-name", "MLmodel").stdout.split()
    assert len(model_files) == 1


def test_serve_profile_serves_the_fl_projects_champion(stack, monkeypatch):
    """The project trained by the test above, served by the serve profile's model server, which reads it as
    serve-<project> (READ on that model only); the same assertions as the embedded stack's (serving_checks)."""
    from serving_checks import assert_bad_payloads_refused, assert_serves

    for key, value in QUIET.items():
        monkeypatch.setenv(key, value)
    project, port = "ComposeFL", free_port()
    serve_env = {"FLOPS_FL_PROJECT": project, "FLOPS_SERVE_PORT": str(port)}
    # The serve profile alone: the model server needs the tracking server and the registered model, not fl.
    stack.compose("--profile", "serve", "up", "--detach", "--wait", "--wait-timeout", "180",
                  "--pull", "never", "--no-build", extra_env=serve_env)
    assert set(stack.container_ids()) == {*SERVICES, "model-server"}  # nothing of the fl profile started
    grant = stack.api("GET", "/api/3.0/mlflow/users/permissions/list", login=stack.admin,
                      params={"username": f"serve-{project}"})
    assert [(p["resource_type"], p["resource_pattern"], p["permission"]) for p in grant.json()["permissions"]] == [
        ("registered_model", project, "READ")], grant.text
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", stack.admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack.admin[1])
    __import__("mlflow").set_tracking_uri(stack.tracking_uri)
    url = f"http://127.0.0.1:{port}"
    assert_serves(url, f"models:/{project}@champion")
    assert_bad_payloads_refused(url)
    logs = stack.compose("--profile", "serve", "logs", "--no-color", "model-server", extra_env=serve_env).stdout
    assert not [key for key, value in stack.secrets.items() if value and value in logs]
    stack.compose("--profile", "serve", "rm", "--stop", "--force", "model-server", extra_env=serve_env)


def write_learner_data(folder: Path, sizes: tuple[int, ...]) -> None:
    """<folder>/learner-<i>/digits.npz with sizes[i] of scikit-learn's digits, as examples/*/data_manager.py reads."""
    import numpy as np
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    start = 0
    for i, size in enumerate(sizes):
        (folder / f"learner-{i}").mkdir(parents=True)
        np.savez(folder / f"learner-{i}" / "digits.npz", x=(x[start:start + size] / 16.0).astype(np.float32),
                 y=y[start:start + size].astype(np.int64))
        start += size


def test_fl_profile_runs_the_pytorch_example_in_its_image_and_serves_its_champion(stack, monkeypatch, tmp_path):
    """One deep-learning project through the fl profile: the aggregator and both learners run the project's own
    image (built from examples/pytorch offline by build-fl-image), each learner trains on its own mounted data
    folder, the champion is a registered PyTorch model, and the serve profile serves it on that same image."""
    import mlflow

    image = torch_example_image()
    for key, value in QUIET.items():
        monkeypatch.setenv(key, value)
    project, rounds, port = "DigitsTorch", 2, free_port()
    data = tmp_path / "fl-data"
    write_learner_data(data, (100, 150))
    fl_env = {"FLOPS_FL_PROJECT": project, "FLOPS_FL_ROUNDS": str(rounds), "FLOPS_FL_IMAGE": image,
              "FLOPS_FL_FLAVOR": "pytorch", "FLOPS_FL_DATA": str(data), "FLOPS_SERVE_IMAGE": image,
              "FLOPS_SERVE_PORT": str(port), "FLOPS_SERVE_MEM_LIMIT": "1536m"}
    stack.compose("up", "--detach", "--wait", "--pull", "never", "--no-build", "tracking-server", extra_env=fl_env)
    ran = stack.compose("run", "--rm", "--use-aliases", "--pull", "never", "fl-aggregator", extra_env=fl_env)
    learners = {}
    for service in FL_SERVICES[1:]:
        container = stack.compose("--profile", "fl", "ps", "--all", "--quiet", service, extra_env=fl_env).stdout.strip()
        code = subprocess.run(["docker", "wait", container], capture_output=True, text=True, timeout=300).stdout
        ran_image = subprocess.run(["docker", "inspect", "--format", "{{.Config.Image}}", container],
                                   capture_output=True, text=True).stdout
        learners[service] = (code.strip(), ran_image.strip())
    logs = ran.stdout + ran.stderr
    assert learners == {service: ("0", image) for service in FL_SERVICES[1:]}, logs[-6000:]
    assert f"summary of {project} " in ran.stdout, logs[-6000:]

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", stack.admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack.admin[1])
    mlflow.set_tracking_uri(stack.tracking_uri)
    experiment = mlflow.get_experiment_by_name(project)
    runs = mlflow.search_runs(experiment_ids=[experiment.experiment_id], output_format="list")
    assert sorted(int(r.data.tags["flops.round"]) for r in runs) == list(range(1, rounds + 1))
    # Each learner trained on its own folder: 80% of 100 and of 150 digits, not the example's default split.
    assert [r.data.metrics["train_examples"] for r in runs] == [80 + 120] * rounds
    assert all(0.0 <= r.data.metrics["accuracy"] <= 1.0 and r.data.metrics["loss"] > 0 for r in runs)
    version = mlflow.MlflowClient().get_model_version_by_alias(project, "champion")
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{project}/{version.version}"))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    assert "pytorch" in mlmodel["flavors"] and mlmodel["metadata"]["flops.ml_repo_tag"] == image.split(":")[-1]

    # The serve profile, on the project's image (torch is in no other image).
    stack.compose("--profile", "serve", "up", "--detach", "--wait", "--wait-timeout", "240", "--pull", "never",
                  "--no-build", "model-server", extra_env=fl_env)
    try:
        served = requests.get(f"http://127.0.0.1:{port}/model", timeout=30).json()
        assert (served["name"], str(served["version"]), served["alias"]) == (project, version.version, "champion")
        example = json.loads((local / "serving_input_example.json").read_text())
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", json=example, timeout=60)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["predictions"]) == len(example["inputs"]) == 5
    finally:
        stack.compose("--profile", "serve", "rm", "--stop", "--force", "model-server", extra_env=fl_env)


def test_down_then_up_keeps_the_data(stack, monkeypatch):
    for key, value in QUIET.items():
        monkeypatch.setenv(key, value)
    logged = tracking_checks.log_example(stack.tracking_uri, experiment="compose-persist", login=stack.admin)
    stack.compose("--profile", "*", "down", "--timeout", "20")
    assert len(stack.volumes()) == len(VOLUMES)
    stack.up()
    import mlflow

    mlflow.set_tracking_uri(stack.tracking_uri)
    with tracking_checks.logged_in(stack.admin):
        assert mlflow.get_run(logged.run_id).data.params == {"C": "1.0", "solver": "lbfgs"}
    assert list(tracking_checks.load_and_predict(stack.tracking_uri, logged.model_uri, login=stack.admin)) == [1, 0]
    # The logins survived too (volume tracking-auth): the admin's, and the FL user's.
    assert stack.api("GET", "/api/2.0/mlflow/users/get", login=stack.admin,
                     params={"username": stack.fl_login()[0]}).status_code == 200
    assert stack.api("GET", "/api/2.0/mlflow/experiments/get-by-name", login=stack.fl_login(),
                     params={"experiment_name": DEFAULT_FL_PROJECT}).status_code == 200


def test_down_with_volumes_removes_the_data(stack):
    assert len(stack.volumes()) == len(VOLUMES)
    stack.compose("--profile", "*", "down", "--volumes", "--timeout", "20")
    deadline = time.monotonic() + 30
    while stack.volumes() and time.monotonic() < deadline:
        time.sleep(1)
    assert stack.volumes() == []
