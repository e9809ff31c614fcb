"""`flops-mlops serve` on the embedded stack: a real FL round, the champion served by MLflow's scoring server, POSTed
to, followed to a new champion, refused bad payloads, listed by `status`, stopped by `serve --stop` and `down`."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid

import conftest
import pytest
import requests
from conftest import free_port
from serving_checks import (assert_bad_payloads_refused, assert_serves, served_version, serving_stack,
                            wait_for_version)

pytestmark = pytest.mark.timeout(600)
QUIET = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "FLWR_TELEMETRY_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}


def run_round(stack: conftest.TestStack, project: str, seed: int) -> dict:
    done = stack.cli("round", "--tenant", "acme", "--project", project, "--rounds", "2", "--learners", "2",
                     "--seed", str(seed), "--json", env=QUIET, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with serving_stack(tmp_path_factory.mktemp("serving")) as stack:
        yield stack


@pytest.fixture(scope="module")
def served(stack):
    """Project Shop trained once and its champion served (alias followed every second)."""
    import mlflow

    config = stack.load()
    mlflow.set_tracking_uri(config.tracking_uri(config.tenant("acme")))
    summary = run_round(stack, "Shop", seed=1)
    port = free_port()
    done = stack.cli("serve", "--tenant", "acme", "--project", "Shop", "--port", str(port), "--poll", "1",
                     "--detach")
    assert done.returncode == 0, done.stderr + done.stdout
    return summary, f"http://127.0.0.1:{port}", done.stdout


def test_serves_the_champion_like_pyfunc(served):
    summary, url, _ = served
    assert served_version(url) == summary["model_version"]
    assert requests.get(f"{url}/ping", timeout=10).status_code == 200
    assert requests.get(f"{url}/version", timeout=10).text == __import__("mlflow").__version__
    assert_serves(url, "models:/Shop@champion")


def test_printed_curl_line_gets_predictions(served):
    import shlex
    import subprocess

    _, _, stdout = served
    line = next(line for line in stdout.splitlines() if line.startswith("predict:"))
    answer = subprocess.run(shlex.split(line.removeprefix("predict:")), capture_output=True, text=True, timeout=30)
    assert answer.returncode == 0 and len(json.loads(answer.stdout)["predictions"]) == 5, answer


def test_bad_payloads_get_4xx_and_serving_goes_on(served):
    assert_bad_payloads_refused(served[1])


def test_reads_as_a_user_with_read_on_the_model_only(stack, served):
    from flops_mlops.tracking.users import AuthAdmin

    config = stack.load()
    admin = AuthAdmin(config.tracking_uri(config.tenant("acme")), stack.secrets().admin_password("acme"))
    grants = [(p["resource_type"], p["resource_pattern"], p["permission"]) for p in admin.permissions("serve-Shop")]
    assert grants == [("registered_model", "Shop", "READ")]
    model_log = (config.state_dir / "logs" / "model-acme-Shop.log").read_text(encoding="utf-8")
    assert stack.secrets().admin_password("acme") not in model_log


def test_a_new_champion_is_served_without_a_restart(stack, served):
    _, url, _ = served
    pid = stack.cli("status", "--json", check=True)
    before = next(s for s in json.loads(pid.stdout)["services"] if s["name"] == "model-acme-Shop")["pid"]
    summary = run_round(stack, "Shop", seed=2)
    assert summary["model_version"] != served[0]["model_version"]
    wait_for_version(url, summary["model_version"], timeout=60)
    assert_serves(url, "models:/Shop@champion")
    after = json.loads(stack.cli("status", "--json", check=True).stdout)
    service = next(s for s in after["services"] if s["name"] == "model-acme-Shop")
    assert service["state"] == "running" and service["pid"] == before and service["kind"] == "model"


def test_unmet_requirements_stop_the_start_with_a_clear_error(stack, served):
    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    x = np.vstack([np.zeros(8), np.ones(8)])
    with mlflow.start_run(experiment_id=mlflow.set_experiment("Old").experiment_id):
        mlflow.sklearn.log_model(LogisticRegression().fit(x, [0, 1]), name="model", input_example=x,
                                 pip_requirements=["scikit-learn==1.0.2", "numpy"], registered_model_name="Old")
    mlflow.MlflowClient().set_registered_model_alias("Old", "champion", "1")
    done = stack.cli("serve", "--tenant", "acme", "--project", "Old", "--port", str(free_port()), "--detach")
    assert done.returncode == 1
    assert "scikit-learn==1.0.2: this environment has scikit-learn==" in done.stderr
    status = json.loads(stack.cli("status", "--json", check=True).stdout)
    # refused before anything of the service was written or started
    assert [s["state"] for s in status["services"] if s["name"] == "model-acme-Old"] in ([], ["stopped"]), status


def test_bad_serve_arguments_exit_2(stack, served):
    for args, expected in ((["--project", "no-such"], "--project"), (["--project", "Shop", "--port", "0"], "--port"),
                           (["--project", "Shop", "--alias", "bad alias"], "--alias"),
                           (["--project", "Shop", "--port", served[1].rsplit(":", 1)[1]], "already served")):
        done = stack.cli("serve", "--tenant", "acme", *args, "--detach")
        assert done.returncode == 2 and expected in done.stderr, (args, done.stderr)


def test_serves_and_follows_a_named_alias(stack, served):
    """--alias NAME: the version that alias points at (not the champion), re-read when the alias moves."""
    import mlflow

    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("Shop", "champion").version
    other = next(v.version for v in client.search_model_versions("name='Shop'") if v.version != champion)
    client.set_registered_model_alias("Shop", "staging", other)
    stack.cli("serve", "--tenant", "acme", "--project", "Shop", "--stop", check=True)
    port = free_port()
    done = stack.cli("serve", "--tenant", "acme", "--project", "Shop", "--alias", "staging", "--port", str(port),
                     "--poll", "1", "--detach")
    assert done.returncode == 0, done.stderr
    assert f"serving models:/Shop/{other} (alias staging; followed every 1 s)" in done.stdout
    url = f"http://127.0.0.1:{port}"
    answer = requests.get(f"{url}/model", timeout=10).json()
    assert (answer["name"], answer["version"], answer["alias"]) == ("Shop", other, "staging")
    assert_serves(url, "models:/Shop@staging")
    client.set_registered_model_alias("Shop", "staging", champion)  # the alias moves: the server follows
    wait_for_version(url, champion, timeout=60)


def test_a_model_version_comes_in_one_request_to_its_readers_only(stack, served, tmp_path):
    """GET /flops/model-versions/archive: the version's files as one tar, the same files MLflow's client downloads,
    for a user with READ on the model; refused to anonymous clients, users of another project and bad input."""
    import io
    import os
    import tarfile
    from pathlib import Path

    import mlflow
    from flops_mlops.tracking.users import AuthAdmin, ensure_project_user, ensure_serving_user

    config = stack.load()
    uri = config.tracking_uri(config.tenant("acme"))
    admin = AuthAdmin(uri, stack.secrets().admin_password("acme"))
    reader, outsider = os.urandom(12).hex(), os.urandom(12).hex()
    ensure_serving_user(admin, "Shop", reader, user=lambda project: "archive-reader")
    ensure_project_user(admin, "Elsewhere", outsider)
    version = served[0]["model_version"]
    archive = f"{uri}/flops/model-versions/archive"

    answer = requests.get(archive, params={"name": "Shop", "version": version}, auth=("archive-reader", reader),
                          timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(answer.content)) as tar:
        archived = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    expected = Path(mlflow.artifacts.download_artifacts(f"models:/Shop/{version}", dst_path=str(tmp_path)))
    # registered_model_meta is written by MLflow's client beside what it downloaded; it is in no store
    assert archived == {p.relative_to(expected).as_posix(): p.read_bytes() for p in expected.rglob("*")
                        if p.is_file() and p.name != "registered_model_meta"}
    assert "MLmodel" in archived

    refusals = [({"name": "Shop", "version": version}, None, 401),
                ({"name": "Shop", "version": version}, ("fl-Elsewhere", outsider), 403),
                ({"name": "Shop", "version": "1 OR 1=1"}, ("archive-reader", reader), 400),
                ({"name": "Shop"}, ("archive-reader", reader), 400),
                ({"name": "Shop", "version": "999"}, stack.admin("acme"), 404),
                ({"name": "NoSuchModel", "version": "1"}, stack.admin("acme"), 404)]
    for params, login, status in refusals:
        answer = requests.get(archive, params=params, auth=login, timeout=30)
        assert answer.status_code == status, (params, login and login[0], answer.status_code, answer.text[:300])
        assert b"MLmodel" not in answer.content


POST_FROM_INSIDE = """
import json, sys, urllib.request
body = open('/srv/model/baked/serving_input_example.json', 'rb').read()
request = urllib.request.Request('http://127.0.0.1:8080/invocations', data=body,
                                 headers={'Content-Type': 'application/json'})
print(urllib.request.urlopen(request, timeout=30).read().decode())
"""


def docker(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert not check or done.returncode == 0, f"docker {' '.join(args[:3])}: {done.stderr[-2000:]}"
    return done


def test_build_model_image_serves_offline_and_holds_no_secret(stack, served, tmp_path):
    """build-model-image bakes the champion into an image FROM the model-server image: with no network at all it
    serves what pyfunc predicts; no layer, history entry or environment variable holds a secret."""
    import mlflow
    from flops_mlops.tracking.users import AuthAdmin
    from mlflow.models import Model

    need_model_server_image(stack.load().images.model_server)
    tag = f"flops-mlops/model-test-{uuid.uuid4().hex[:8]}:1"
    done = stack.cli("build-model-image", "--tenant", "acme", "--project", "Shop", "--tag", tag, timeout=600)
    assert done.returncode == 0, done.stderr + done.stdout
    container = None
    try:
        container = docker("run", "--detach", "--network", "none", tag).stdout.strip()
        deadline = time.monotonic() + 120
        while docker("inspect", "--format", "{{.State.Health.Status}}", container).stdout.strip() != "healthy":
            assert time.monotonic() < deadline, docker("logs", container).stderr[-3000:]
            time.sleep(1)
        answer = json.loads(docker("exec", container, "python", "-c", POST_FROM_INSIDE).stdout)
        version = mlflow.MlflowClient().get_model_version_by_alias("Shop", "champion").version
        local = mlflow.artifacts.download_artifacts(f"models:/Shop/{version}")
        expected = mlflow.pyfunc.load_model(local).predict(Model.load(local).load_input_example(local))
        assert answer["predictions"] == list(expected)
        # What the build added: the model's files, and ENV/LABEL lines naming it; none holds a secret.
        docker("cp", f"{container}:/srv/model/baked", str(tmp_path / "baked"))
        added = "".join(p.read_text(errors="replace") for p in (tmp_path / "baked").rglob("*") if p.is_file())
        added += docker("history", "--no-trunc", tag).stdout + docker("image", "inspect", tag).stdout
        secrets = [value for value in stack.secrets().values.values() if len(value) >= 8]
        assert secrets and not [value for value in secrets if value in added]
        assert "PASSWORD" not in docker("image", "inspect", "--format", "{{json .Config.Env}}", tag).stdout
        # It read the model as image-<project>: the running model server's serve-<project> kept its password.
        config = stack.load()
        admin = AuthAdmin(config.tracking_uri(config.tenant("acme")), stack.secrets().admin_password("acme"))
        grants = [(p["resource_type"], p["resource_pattern"], p["permission"]) for p in admin.permissions("image-Shop")]
        assert grants == [("registered_model", "Shop", "READ")]
        time.sleep(3)  # three polls of the running server (--poll 1)
        assert "refused" not in (config.state_dir / "logs" / "model-acme-Shop.log").read_text(encoding="utf-8")
    finally:
        if container:
            docker("rm", "--force", container, check=False)
        docker("image", "rm", "--force", tag, check=False)


def need_model_server_image(image: str) -> None:
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode:
        conftest.missing_service("no Docker engine (build-model-image needs one)")
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode:
        conftest.missing_service(f"image {image} is missing (scripts/compose-ci.sh builds it)")


def test_a_rekeyed_server_stops_following_and_locks_no_one_out(stack, served):
    """serve-Shop re-keyed behind a running server's back (as another start does): the server keeps serving what it
    has and stops asking, rather than failing a login every poll until the tracking server's throttle blocks the
    user and the address (every login from 127.0.0.1, the admin's too)."""
    from flops_mlops.tracking.users import AuthAdmin, ensure_serving_user

    config = stack.load()
    uri = config.tracking_uri(config.tenant("acme"))
    admin = AuthAdmin(uri, stack.secrets().admin_password("acme"))
    services = json.loads(stack.cli("status", "--json", check=True).stdout)["services"]
    url = next(f"http://{s['address']}" for s in services
               if s["name"] == "model-acme-Shop" and s["state"] == "running")
    version = served_version(url)
    ensure_serving_user(admin, "Shop", "a-new-password-0123456789")  # what another start does
    log = config.state_dir / "logs" / "model-acme-Shop.log"
    deadline = time.monotonic() + 30
    while "no longer followed" not in log.read_text(encoding="utf-8"):
        assert time.monotonic() < deadline, log.read_text(encoding="utf-8")[-2000:]
        time.sleep(0.5)
    time.sleep(8)  # eight more polls, were it still asking
    assert log.read_text(encoding="utf-8").count("login was refused") == 1
    assert served_version(url) == version
    new_password = "a-new-password-0123456789"
    for user, password in (("admin", stack.secrets().admin_password("acme")), ("serve-Shop", new_password)):
        answer = requests.get(f"{uri}/api/2.0/mlflow/registered-models/get", params={"name": "Shop"},
                              auth=(user, password), timeout=10)
        assert answer.status_code == 200, (user, answer.status_code, answer.text[:200])


def test_stop_and_down_stop_the_model_server(stack, served):
    _, url, _ = served
    stopped = stack.cli("serve", "--tenant", "acme", "--project", "Shop", "--stop", check=True)
    assert "stopped" in stopped.stdout
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/ping", timeout=5)
    port = free_port()
    stack.cli("serve", "--tenant", "acme", "--project", "Shop", "--version", "1", "--port", str(port), "--detach",
              check=True)
    assert served_version(f"http://127.0.0.1:{port}") == "1"
    down = stack.cli("down", check=True)
    assert "stopped model-acme-Shop" in down.stderr
    status = json.loads(stack.cli("status", "--json", check=True).stdout)
    assert next(s for s in status["services"] if s["name"] == "model-acme-Shop")["state"] == "stopped"
